"""Load generator for the served recommender (Triton gRPC), and the in-process ONNX Runtime floor.

Why it is built this way:
- **Open loop.** Requests are due at fixed times (``rate_per_s``), whether or not earlier ones
  were answered, and latency runs from the *due* time to the answer. A slow server therefore shows
  its queueing in the latency instead of silently slowing the client down (no coordinated omission).
- **Several processes.** N worker processes (spawned, not forked: gRPC and threads do not survive
  a fork), each with its own gRPC channel and asyncio loop, share the rate; the due times are
  interleaved so the arrivals stay evenly spaced. ``send_lag`` (how late requests left compared
  with their due time) tells whether the client kept up: if it is large, the client was the
  bottleneck and the numbers say nothing about the server.
- **Cheap requests.** Each worker serialises its ``ModelInferRequest`` messages once (tritonclient's
  protobuf classes, raw tensor contents) and sends the bytes as they are; answers are parsed to check
  them and to record which model version answered. Two engines: ``threads`` (a blocking gRPC channel,
  futures, answers handled on gRPC's thread; the default, it took less CPU per request here than
  ``asyncio``, a grpc.aio event loop). The garbage collector is off during a level: a full
  collection over the growing sample list stalled sending for tens of milliseconds.
- **Warm-up excluded.** Requests due in the first ``warmup_s`` are sent but not counted.
- A **closed-loop** mode (``rate_per_s=None``: ``concurrency`` clients, each sends its next
  request when the previous one is answered) probes capacity.
- **Windowed runs** (``LoadGenerator.run_windowed``, for soak tests minutes long): workers hand
  their samples to the parent every ``flush_s`` instead of once at the end, so the parent reports
  each time window while the load goes on and no worker holds minutes of samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

import numpy as np

from pipelines.core.contract import INPUT_NAME, OUTPUT_IDS, OUTPUT_SCORES, left_pad

MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MAX_ERROR_MESSAGES = 5
ENGINES = ("asyncio", "threads")  # grpc.aio event loop, or blocking channel futures + callbacks


@dataclass(frozen=True)
class LoadLevel:
    """One load level: open loop at rate_per_s (None: closed loop with `concurrency` clients)."""

    rate_per_s: float | None
    duration_s: float
    concurrency: int = 64  # open loop: most requests in flight at once (all workers); closed: clients
    warmup_s: float = 1.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0 or None (closed loop), got {self.rate_per_s}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class LoadResult:
    """What one load level measured (the warm-up excluded)."""

    mode: str  # "open" | "closed"
    target_rps: float | None
    duration_s: float
    workers: int
    concurrency: int
    requests: int  # counted requests (due after the warm-up)
    ok: int
    errors: int
    achieved_rps: float  # answered requests per second of the measured window
    requests_per_min: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float  # how late requests left vs. their due time: large = client bottleneck
    error_messages: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # model version -> answers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkerRecord:
    """Raw per-request samples of one worker (times are time.monotonic(), shared by all processes)."""

    due: np.ndarray  # when each request was due (closed loop: when it was sent)
    sent: np.ndarray
    done: np.ndarray
    ok: np.ndarray  # bool
    versions: list[str]
    first_items: np.ndarray  # the top item of each answer (-1 on error)
    errors: Counter[str]
    payload_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # which payload each was


# ---------------------------------------------------------------------------------------- requests
def build_infer_request(model_name: str, session: np.ndarray, request_id: str = "", *,
                        input_name: str = INPUT_NAME, extras: dict[str, np.ndarray] | None = None) -> bytes:
    """A serialised ModelInferRequest for one left-padded session (int64 [1, length]) under `input_name`, plus
    `extras`: more inputs of one row each (int64, or an object array of bytes sent as BYTES)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model_name, id=request_id)
    for name, value in {input_name: np.asarray(session, dtype=np.int64).reshape(1, -1), **(extras or {})}.items():
        tensor = request.inputs.add()
        x = np.asarray(value)
        tensor.name, tensor.datatype = name, "BYTES" if x.dtype == object else "INT64"
        tensor.shape.extend(x.shape)
        if x.dtype == object:  # BYTES: each element as a 4-byte little-endian length and its bytes
            raw = b"".join(len(v).to_bytes(4, "little") + v for v in (bytes(e) for e in x.ravel()))
        else:
            raw = np.ascontiguousarray(x, dtype=np.int64).tobytes()
        request.raw_input_contents.append(raw)
    for name in (OUTPUT_IDS, OUTPUT_SCORES):
        request.outputs.add().name = name
    return request.SerializeToString()


def _parse_answer(raw: bytes) -> tuple[str, int]:
    """(model version, top item id) of a ModelInferResponse; ValueError if it lacks item_ids."""
    response = _response_type().FromString(raw)
    for index, output in enumerate(response.outputs):
        if output.name == OUTPUT_IDS:
            contents = response.raw_output_contents[index]
            if len(contents) < 8:
                raise ValueError(f"{OUTPUT_IDS} is empty in the answer of {response.model_name}")
            return response.model_version, int.from_bytes(contents[:8], "little", signed=True)
    raise ValueError(f"answer of {response.model_name} has no {OUTPUT_IDS!r} output")


@functools.cache
def _response_type() -> Any:
    """ModelInferResponse, imported once (this runs for every answer)."""
    from tritonclient.grpc import service_pb2

    return service_pb2.ModelInferResponse


# ---------------------------------------------------------------------------------------- worker side
async def _run_job(job: dict[str, Any]) -> WorkerRecord:
    """Send this worker's share of one load level and record every request."""
    import grpc

    payloads: list[bytes] = job["payloads"]
    level: LoadLevel = job["level"]
    samples: list[tuple[float, float, float, bool, str, int, int]] = []
    errors: Counter[str] = Counter()
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(job["url"], options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        call = channel.unary_unary(MODEL_INFER_METHOD)  # bytes in, bytes out

        async def one(k: int, due: float) -> None:
            sent = time.monotonic()
            try:
                raw = await call(payloads[k % len(payloads)], timeout=level.timeout_s)
                version, first = _parse_answer(raw)
                samples.append((due, sent, time.monotonic(), True, version, first, k % len(payloads)))
            except grpc.aio.AioRpcError as exc:
                samples.append((due, sent, time.monotonic(), False, "", -1, k % len(payloads)))
                errors[f"{exc.code().name}: {exc.details()}"] += 1
            except ValueError as exc:
                samples.append((due, sent, time.monotonic(), False, "", -1, k % len(payloads)))
                errors[f"bad answer: {exc}"] += 1

        start, end = job["start"], job["start"] + level.warmup_s + level.duration_s
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if level.rate_per_s is None:  # closed loop: each client sends again when answered
            async def client(c: int) -> None:
                k = c
                while (now := time.monotonic()) < end:
                    await one(k, now)
                    k += job["clients"]

            await asyncio.gather(*(client(c) for c in range(job["clients"])))
        else:
            interval = job["workers"] / level.rate_per_s
            offset = job["index"] / level.rate_per_s
            in_flight = asyncio.Semaphore(job["clients"])
            tasks: set[asyncio.Task[None]] = set()
            k = 0
            while (due := start + offset + k * interval) < end:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await in_flight.acquire()

                async def bounded(k: int = k, due: float = due) -> None:
                    try:
                        await one(k, due)
                    finally:
                        in_flight.release()

                task = asyncio.ensure_future(bounded())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                k += 1
            if tasks:
                await asyncio.gather(*tasks)
    return _record(samples, errors)


def _record(samples: list[tuple[float, float, float, bool, str, int, int]], errors: Counter[str]) -> WorkerRecord:
    if samples:
        due_a, sent_a, done_a, ok_a, versions, first, index = zip(*samples, strict=True)
    else:
        due_a = sent_a = done_a = ok_a = first = index = ()
        versions = ()
    return WorkerRecord(
        due=np.asarray(due_a, dtype=np.float64),
        sent=np.asarray(sent_a, dtype=np.float64),
        done=np.asarray(done_a, dtype=np.float64),
        ok=np.asarray(ok_a, dtype=bool),
        versions=list(versions),
        first_items=np.asarray(first, dtype=np.int64),
        errors=errors,
        payload_index=np.asarray(index, dtype=np.int64),
    )


def _run_job_threads(job: dict[str, Any], emit: Callable[[float, WorkerRecord], None] | None = None) -> WorkerRecord:
    """The same job with a blocking gRPC channel: futures, answers handled on gRPC's own thread.

    With ``emit`` and ``job["flush_s"]``, the samples gathered so far are handed to ``emit(now,
    record)`` every flush_s seconds (windowed runs); the returned record holds the rest.
    """
    import threading

    import grpc

    payloads: list[bytes] = job["payloads"]
    level: LoadLevel = job["level"]
    samples: list[tuple[float, float, float, bool, str, int, int]] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()  # answers are recorded on gRPC's threads while the flusher takes them

    def take() -> WorkerRecord:
        nonlocal samples, errors
        with lock:
            taken, taken_errors = samples, errors
            samples, errors = [], Counter()
        return _record(taken, taken_errors)

    stop_flushing = threading.Event()

    def flusher(every: float) -> None:
        while not stop_flushing.wait(every):
            now = time.monotonic()
            emit(now, take())  # only started when emit is given

    @contextlib.contextmanager
    def flushing() -> Iterator[None]:
        """Hand samples over every flush_s while the job runs; stopped before the last record is sent."""
        if emit is None or not job.get("flush_s"):
            yield
            return
        thread = threading.Thread(target=flusher, args=(float(job["flush_s"]),), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop_flushing.set()
            thread.join()
    clients: int = job["clients"]
    slots = threading.Semaphore(clients)
    start, end = job["start"], job["start"] + level.warmup_s + level.duration_s
    closed = level.rate_per_s is None
    with flushing(), grpc.insecure_channel(job["url"]) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        call = channel.unary_unary(MODEL_INFER_METHOD)  # bytes in, bytes out

        def send(k: int, due: float) -> None:
            sent = time.monotonic()
            future = call.future(payloads[k % len(payloads)], timeout=level.timeout_s)
            future.add_done_callback(lambda f: finish(f, k, due, sent))

        def finish(future: Any, k: int, due: float, sent: float) -> None:
            done = time.monotonic()
            error = ""
            try:
                version, first = _parse_answer(future.result())
            except grpc.RpcError as exc:
                version, first, error = "", -1, f"{exc.code().name}: {exc.details()}"
            except ValueError as exc:
                version, first, error = "", -1, f"bad answer: {exc}"
            with lock:
                samples.append((due, sent, done, not error, version, first, k % len(payloads)))
                if error:
                    errors[error] += 1
            if closed and (now := time.monotonic()) < end:
                send(k + clients, now)  # this client's next request
            else:
                slots.release()

        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if closed:
            for c in range(clients):
                slots.acquire()
                send(c, time.monotonic())
        else:
            interval = job["workers"] / level.rate_per_s
            offset = job["index"] / level.rate_per_s
            k = 0
            while (due := start + offset + k * interval) < end:
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                slots.acquire()
                send(k, due)
                k += 1
        for _ in range(clients):  # every request answered (or timed out)
            slots.acquire()
    return take()


def _worker_main(conn: Connection) -> None:
    """Worker process loop: receive a job, run it, send back its WorkerRecord (or the exception)."""
    import grpc  # noqa: F401 - imported before the first job so that its start is on time
    from tritonclient.grpc import service_pb2  # noqa: F401

    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        gc.collect()
        gc.disable()  # a full collection over the growing sample list stalls sending for tens of ms
        try:
            if job.get("engine") == "threads":
                emit = (lambda now, record: conn.send(("window", now, record))) if job.get("flush_s") else None
                conn.send(_run_job_threads(job, emit))
            else:
                conn.send(asyncio.run(_run_job(job)))
        except Exception as exc:  # noqa: BLE001 - reported to the parent with its type
            conn.send(RuntimeError(f"load worker {job.get('index')} failed: {type(exc).__name__}: {exc}"))
        finally:
            gc.enable()


# ---------------------------------------------------------------------------------------- parent side
def merged_samples(records: Sequence[WorkerRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(due, sent, done, ok) of every sample of the records, as one array each."""
    if not records:
        return np.empty(0), np.empty(0), np.empty(0), np.empty(0, dtype=bool)
    due, sent, done, ok = (np.concatenate([getattr(r, name) for r in records]) for name in ("due", "sent", "done", "ok"))
    return due, sent, done, ok


def _pct(values: np.ndarray, q: float) -> float:
    """The q-th percentile rounded to µs, NaN when there are no values."""
    return round(float(np.percentile(values, q)), 3) if values.size else float("nan")


def summarise(
    records: Sequence[WorkerRecord], level: LoadLevel, start: float, workers: int, clients: int
) -> LoadResult:
    """Merge the workers' samples into one LoadResult (requests due before the warm-up ends dropped)."""
    window_start = start + level.warmup_s
    due, sent, done, ok = merged_samples(records)
    versions = [v for r in records for v in r.versions]
    counted = due >= window_start
    latency_ms = (done - due)[counted & ok] * 1e3
    lag_ms = (sent - due)[counted] * 1e3
    n_ok, n = int((counted & ok).sum()), int(counted.sum())
    # Answers per second over the span of the answers themselves: a server that keeps up matches
    # the offered rate, one that falls behind spreads the same answers over a longer span.
    answered = np.sort(done[counted & ok])
    span = float(answered[-1] - answered[0]) if n_ok > 1 else 0.0
    achieved = (n_ok - 1) / span if span > 0 else 0.0
    errors: Counter[str] = Counter()
    for r in records:
        errors.update(r.errors)

    return LoadResult(
        mode="closed" if level.rate_per_s is None else "open",
        target_rps=level.rate_per_s,
        duration_s=level.duration_s,
        workers=workers,
        concurrency=clients,
        requests=n,
        ok=n_ok,
        errors=n - n_ok,
        achieved_rps=round(achieved, 2),
        requests_per_min=round(achieved * 60, 1),
        mean_ms=round(float(latency_ms.mean()), 3) if latency_ms.size else float("nan"),
        p50_ms=_pct(latency_ms, 50),
        p95_ms=_pct(latency_ms, 95),
        p99_ms=_pct(latency_ms, 99),
        max_ms=round(float(latency_ms.max()), 3) if latency_ms.size else float("nan"),
        send_lag_p99_ms=_pct(lag_ms, 99),
        error_messages=[f"{count}x {message}" for message, count in errors.most_common(MAX_ERROR_MESSAGES)],
        versions=dict(Counter(v for v, good, c in zip(versions, ok, counted, strict=True) if good and c)),
    )


@dataclass
class WindowStats:
    """One time window of a windowed run: the requests answered in it (by answer time)."""

    index: int
    start_s: float  # seconds after the measured part began (the warm-up excluded)
    end_s: float
    requests: int  # answered or failed in this window (due after the warm-up)
    ok: int
    errors: int
    rps: float  # answers per second of the window
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_stats(records: Sequence[WorkerRecord], index: int, t0: float, t1: float, origin: float,
                 last: bool = False) -> WindowStats:
    """Statistics of the requests due at/after `origin` and finished in [t0, t1) (the last window: >= t0).

    Binning by finish time lets a window be reported as soon as every worker has handed over its
    samples past t1; a request's latency still runs from its due time.
    """
    # only records with an answer in the window: a long run does not re-merge everything before it
    due, sent, done, ok = merged_samples([r for r in records if r.done.size and r.done.max() >= t0])
    inside = (due >= origin) & (done >= t0) & ((done < t1) | last)
    latency_ms = (done - due)[inside & ok] * 1e3
    lag_ms = (sent - due)[inside] * 1e3

    n, n_ok = int(inside.sum()), int((inside & ok).sum())
    return WindowStats(
        index=index, start_s=round(t0 - origin, 3), end_s=round(t1 - origin, 3), requests=n, ok=n_ok,
        errors=n - n_ok, rps=round(n_ok / (t1 - t0), 2) if t1 > t0 else 0.0,
        p50_ms=_pct(latency_ms, 50), p95_ms=_pct(latency_ms, 95), p99_ms=_pct(latency_ms, 99),
        max_ms=round(float(latency_ms.max()), 3) if latency_ms.size else float("nan"),
        send_lag_p99_ms=_pct(lag_ms, 99),
    )


class LoadGenerator:
    """N spawned worker processes that stay up across load levels (start once, run many).

    Use as a context manager. ``run`` sends the same list of sessions round-robin to one model.
    """

    def __init__(self, url: str, *, workers: int = 2, start_delay_s: float = 1.0, engine: str = "threads",
                 cpus: Sequence[int] = ()) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.url, self.workers, self.start_delay_s, self.engine = url, workers, start_delay_s, engine
        self.cpus = tuple(cpus)  # pin the workers to these CPUs (empty: wherever the OS puts them)
        self._procs: list[tuple[mp.process.BaseProcess, Connection]] = []
        self.last_records: list[WorkerRecord] = []  # raw samples of the last run (for tests)
        self.last_start: float = 0.0

    def start(self) -> Self:
        ctx = mp.get_context("spawn")
        for _ in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._procs.append((proc, parent))
            if self.cpus and proc.pid is not None:
                os.sched_setaffinity(proc.pid, self.cpus)
        for proc, conn in self._procs:  # imports done: the first level starts on time
            if not conn.poll(120) or conn.recv() != "ready":
                self.stop()
                raise RuntimeError(f"load worker pid {proc.pid} did not start within 120s")
        return self

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (to account for their CPU time)."""
        return [proc.pid for proc, _ in self._procs if proc.pid is not None]

    def stop(self) -> None:
        for proc, conn in self._procs:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            conn.close()
        self._procs = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _dispatch(self, model_name: str, sessions: Sequence[np.ndarray], level: LoadLevel,
                  payloads: Sequence[bytes] | None = None, **job: Any) -> tuple[float, int]:
        """Send every worker its share of one level (plus `job` extras); returns (start time, clients per worker).
        `payloads` (serialised requests, build_infer_request) replace the plain sessions when given."""
        if not self._procs:
            raise RuntimeError("LoadGenerator is not started: use it as a context manager or call start()")
        if not sessions and not payloads:
            raise ValueError("sessions must not be empty")
        payloads = list(payloads) if payloads else [build_infer_request(model_name, s) for s in sessions]
        clients = max(1, level.concurrency // self.workers)
        start = time.monotonic() + self.start_delay_s
        for index, (_, conn) in enumerate(self._procs):
            conn.send({
                "url": self.url, "payloads": payloads, "level": level, "start": start,
                "index": index, "workers": self.workers, "clients": clients, "engine": self.engine, **job,
            })
        return start, clients

    def run(self, model_name: str, sessions: Sequence[np.ndarray], level: LoadLevel,
            payloads: Sequence[bytes] | None = None) -> LoadResult:
        """Drive one load level against model_name and return its statistics (`payloads`: prepared requests)."""
        start, clients = self._dispatch(model_name, sessions, level, payloads)
        limit = self.start_delay_s + level.warmup_s + level.duration_s + level.timeout_s + 60
        records: list[WorkerRecord] = []
        for proc, conn in self._procs:
            if not conn.poll(limit):
                raise TimeoutError(f"load worker pid {proc.pid} did not report within {limit:.0f}s")
            got = conn.recv()
            if isinstance(got, Exception):
                raise got
            records.append(got)
        self.last_records, self.last_start = records, start
        return summarise(records, level, start, self.workers, clients * self.workers)

    def run_windowed(
        self,
        model_name: str,
        sessions: Sequence[np.ndarray],
        level: LoadLevel,
        window_s: float,
        on_window: Callable[[WindowStats], None] | None = None,
        flush_s: float | None = None,
    ) -> tuple[LoadResult, list[WindowStats]]:
        """One long level, reported window by window while it runs (soak tests).

        Workers hand over their samples every ``flush_s`` (default: a quarter window, at most 1 s);
        window i ([i*window_s, (i+1)*window_s) after the warm-up, by answer time) is summarised and
        passed to ``on_window`` once every worker has handed over samples past its end. Returns the
        whole level's LoadResult (as ``run`` would) and the windows. Needs the threads engine.
        """
        if self.engine != "threads":
            raise ValueError(f"run_windowed needs engine='threads', this generator uses {self.engine!r}")
        if not 0 < window_s <= level.duration_s:
            raise ValueError(f"window_s must be in (0, duration_s={level.duration_s}], got {window_s}")
        flush_s = flush_s if flush_s is not None else min(1.0, window_s / 4)
        if not flush_s > 0:
            raise ValueError(f"flush_s must be > 0, got {flush_s}")
        start, clients = self._dispatch(model_name, sessions, level, flush_s=flush_s)
        origin = start + level.warmup_s
        n_windows = math.ceil(level.duration_s / window_s - 1e-9)
        bounds = [origin + min((i + 1) * window_s, level.duration_s) for i in range(n_windows)]
        # Answers recorded just before a flush may reach the next one: wait a little past a window's end.
        margin = flush_s + 0.25
        deadline = start + level.warmup_s + level.duration_s + level.timeout_s + 60
        conns = {conn: proc for proc, conn in self._procs}
        handed: dict[Connection, float] = dict.fromkeys(conns, -math.inf)  # samples handed over up to
        finished: set[Connection] = set()
        records: list[WorkerRecord] = []
        windows: list[WindowStats] = []
        while len(windows) < n_windows:
            waiting = [c for c in conns if c not in finished]
            for conn in multiprocessing.connection.wait(waiting, timeout=0.2) if waiting else []:
                got = conn.recv()
                if isinstance(got, Exception):
                    raise got
                if isinstance(got, tuple):  # ("window", handed-over time, record)
                    handed[conn] = got[1]
                    records.append(got[2])
                else:
                    finished.add(conn)
                    handed[conn] = math.inf
                    records.append(got)
            if waiting and time.monotonic() > deadline:
                late = [conns[c].pid for c in waiting]
                raise TimeoutError(f"load worker(s) {late} did not report within {deadline - start:.0f}s")
            while len(windows) < n_windows:
                i = len(windows)
                if len(finished) < len(conns) and (i == n_windows - 1  # the last one takes every answer
                                                   or min(handed.values()) < bounds[i] + margin):
                    break
                t0 = origin + i * window_s
                stats = window_stats(records, i, t0, bounds[i], origin, last=i == n_windows - 1)
                windows.append(stats)
                if on_window is not None:
                    on_window(stats)
        self.last_records, self.last_start = records, start
        return summarise(records, level, start, self.workers, clients * self.workers), windows


# ---------------------------------------------------------------------------------------- ORT floor
@dataclass
class OrtFloor:
    """In-process ONNX Runtime on the same model: the best any server can do on this CPU."""

    threads: int
    batch1_p50_ms: float  # one session per call, back to back
    batch1_p99_ms: float
    batch1_rps: float
    batched: dict[int, float]  # batch size -> sessions per second

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_floor(
    onnx_path: Path,
    sessions: Sequence[np.ndarray],
    *,
    threads: int = 1,
    batch_sizes: Sequence[int] = (8, 32),
    seconds: float = 2.0,
) -> OrtFloor:
    """Time onnxruntime on batch=1 requests (latency, rate) and on batches (throughput)."""
    import onnxruntime as ort

    from pipelines.export.onnx import onnx_feeds

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rows = [np.asarray(s, dtype=np.int64).reshape(1, -1) for s in sessions]
    for x in rows[:3]:
        session.run(None, onnx_feeds(session, x))
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        x = rows[len(times) % len(rows)]
        t = time.perf_counter()
        session.run(None, onnx_feeds(session, x))
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    batched: dict[int, float] = {}
    for size in batch_sizes:
        x = left_pad([rows[i % len(rows)][0] for i in range(size)])
        session.run(None, onnx_feeds(session, x))
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2 or calls == 0:
            session.run(None, onnx_feeds(session, x))
            calls += 1
        batched[int(size)] = round(size * calls / (time.perf_counter() - t0), 1)
    return OrtFloor(
        threads=threads,
        batch1_p50_ms=round(float(np.percentile(ms, 50)), 3),
        batch1_p99_ms=round(float(np.percentile(ms, 99)), 3),
        batch1_rps=round(len(ms) / float(ms.sum() / 1e3), 1),
        batched=batched,
    )


__all__ = [
    "LoadGenerator",
    "LoadLevel",
    "LoadResult",
    "OrtFloor",
    "WindowStats",
    "WorkerRecord",
    "build_infer_request",
    "ort_floor",
    "summarise",
    "window_stats",
]
