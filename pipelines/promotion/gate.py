"""The promotion gate: may the registered challenger replace the champion?

Both models are scored here by the same code on the same data (through ONNX Runtime on the exported
files, i.e. what would be served), so a champion trained on an older data version is judged on
today's data. The decision is taken on the **validation** split (each user's second-to-last item):
the challenger must beat the champion on the primary metric by a margin, no guard metric (coverage,
cold-start HR) may drop by more than its tolerance, export parity must hold, and the challenger's
p95 latency through a real Triton server (the profile's, when RXREC_TRITON_URL names one) must stay
under the budget. Only after the decision is recorded is the test split read, once, and both models'
test figures are reported beside it, never decided on (pipelines/promotion/splits.py). Every check is kept with its numbers so the decision can
be logged and printed.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.config import GateSettings, Paths, Settings
from pipelines.data.sequences import Sequences

if TYPE_CHECKING:
    from pipelines.serve.remote import RemoteTriton

MIN_COLD_USERS = 5  # fewer test users with a cold target: cold-start HR is "not available"


@dataclass
class GateCheck:
    """One condition of the gate, with the numbers it was decided on."""

    name: str
    passed: bool
    detail: str


DECISION_SPLIT = "valid"  # the protocol's split the gate decides on (the test split is only reported)
DECIDED_ON = "validation"  # the same, as the report says it


@dataclass
class GateReport:
    """The decision and everything it rests on (written to gate.json, logged to MLflow).

    `valid_*` are the figures the decision was taken on; `test_*` are filled in after it, for the
    report only (empty when the gate stopped before a decision).
    """

    challenger_version: str
    champion_version: str | None
    promote: bool  # the gate's verdict
    applied: bool  # whether `champion` was actually moved (false on a dry run or a reject)
    reason: str
    checks: list[GateCheck] = field(default_factory=list)
    valid_challenger: dict[str, float] = field(default_factory=dict)
    valid_champion: dict[str, float] = field(default_factory=dict)
    compared_on: str = ""
    latency: dict[str, float] = field(default_factory=dict)
    decided_on: str = DECIDED_ON
    test_challenger: dict[str, float] = field(default_factory=dict)
    test_champion: dict[str, float] = field(default_factory=dict)
    test_reported_on: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        from pipelines.core.files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    def _champion_label(self) -> str:
        return f"champion v{self.champion_version}" if self.champion_version else "champion (none)"

    def table(self) -> str:
        """The decision as the task log shows it: one row per validation metric, both models side by side."""
        challenger = f"v{self.challenger_version}" if self.challenger_version else "(not registered)"
        lines = [f"PROMOTION GATE: {'PROMOTE' if self.promote else 'REJECT'} challenger "
                 f"{challenger}, decided on {self.decided_on}" + ("" if self.applied or not self.promote else
                                                                  " (dry run: champion not moved)"),
                 f"  compared on: {self.compared_on}",
                 *_rows(self.valid_challenger, self.valid_champion, self._champion_label())]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines.append(f"  reason: {self.reason}")
        return "\n".join(lines)

    def test_table(self) -> str:
        """The test figures read after the decision: reported, never decided on."""
        return "\n".join([f"TEST REPORT (read after the decision, not used for it): {self.test_reported_on}",
                          *_rows(self.test_challenger, self.test_champion, self._champion_label())])

    def markdown(self) -> str:
        """Decision and figures as a markdown table (the registered version's description)."""
        verdict = "promote" if self.applied else ("dry run: would promote" if self.promote else "reject")
        lines = [f"**Promotion gate: {verdict}**, decided on the {self.decided_on} split ({self.compared_on}).",
                 "", f"| metric | split | challenger | {self._champion_label()} |", "|---|---|---|---|"]
        for split, challenger, champion in ((self.decided_on, self.valid_challenger, self.valid_champion),
                                            ("test (report only)", self.test_challenger, self.test_champion)):
            for name in sorted(set(challenger) | set(champion)):
                lines.append(f"| {name} | {split} | {_fmt(challenger.get(name))} | {_fmt(champion.get(name))} |")
        lines += ["", *[f"- {'ok' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks],
                  "", f"Reason: {self.reason}"]
        return "\n".join(lines)


def _rows(challenger: dict[str, float], champion: dict[str, float], champion_label: str) -> list[str]:
    """One line per metric, both models side by side."""
    lines = [f"  {'metric':<24}{'challenger':>14}{champion_label:>22}"]
    for name in sorted(set(challenger) | set(champion)):
        lines.append(f"  {name:<24}{_fmt(challenger.get(name)):>14}{_fmt(champion.get(name)):>22}")
    return lines


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


# --------------------------------------------------------------------------- scoring on one split


def onnx_metrics(onnx_path: Path, seqs: Sequences, split: str, k: int, cold_max_interactions: int,
                 batch_size: int = 512, max_users: int | None = None) -> dict[str, float]:
    """HR@k, NDCG@k, coverage@k and cold-start HR@k of an exported model on one split of `seqs`.

    Ranked by the one evaluation protocol on the model's own top-k output (masking and top-k are
    inside the ONNX graph), so it scores exactly what Triton would serve; a target outside the top-k
    is a miss, exact for HR@k and NDCG@k. Cold-start targets: pipelines/evaluate/slices.py (at most
    `cold_max_interactions` training interactions, params.yaml `evaluate`); `max_users`: the protocol's
    fixed user sample (`evaluate.max_users`), the same users for challenger and champion.
    """
    from pipelines.evaluate.protocol import TopKRanker, evaluate
    from pipelines.evaluate.slices import cold_start_users
    from pipelines.export.onnx import onnx_session, onnx_top_k
    from pipelines.repository.metadata import read_model_metadata
    from pipelines.serve.client import pad_sessions

    session = onnx_session(onnx_path)
    meta = read_model_metadata(onnx_path)
    if meta.n_items != seqs.n_items:
        raise IncompatibleModel(f"model has {meta.n_items} items, the current catalogue {seqs.n_items}")

    def recommend(histories: list[np.ndarray], kinds: list[np.ndarray] | None) -> np.ndarray:
        batch = [h.tolist() or [0] for h in histories]
        if kinds is None:
            return onnx_top_k(session, pad_sessions(batch, meta.max_len))[0]
        batch_kinds = [row.tolist() or [0] for row in kinds]  # a graph without event_types ignores them
        return onnx_top_k(session, *pad_sessions(batch, meta.max_len, batch_kinds))[0]

    k = min(k, meta.top_k)
    cold = cold_start_users(seqs, split, cold_max_interactions)
    ranker = TopKRanker(onnx_path.name, recommend, meta.top_k, uses_event_kinds=True)
    result = evaluate(ranker, seqs, split=split, k=k, batch_size=batch_size, slices={"cold_start": cold},
                      max_users=max_users)
    out = {key: result[key] for key in (f"hr_at_{k}", f"ndcg_at_{k}", f"coverage_at_{k}", "n_users")}
    cold_start = result["slices"]["cold_start"]
    if cold_start["n_users"] >= MIN_COLD_USERS:
        out[f"cold_start_hr_at_{k}"] = cold_start[f"hr_at_{k}"]
        out["cold_start_users"] = float(cold_start["n_users"])
    return out


class IncompatibleModel(ValueError):
    """The champion cannot be scored on the current split (another catalogue)."""


# --------------------------------------------------------------------------- the artifact itself


def _one_line(exc: BaseException) -> str:
    """An exception as one short line for a gate check's detail."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def artifact_checks(onnx_path: Path, n_items: int) -> list[GateCheck]:
    """Is this file a servable model for today's catalogue? Checked before anything is registered.

    A truncated or corrupt file, a graph that ONNX Runtime cannot load, or one whose tensors break
    the serving contract (pipelines/core/contract.py: names, int64 ids, float32 scores, the
    catalogue's n_items) is rejected here with the reason, so it never becomes a registry version,
    let alone the champion. Stops at the first failing check (later ones need the earlier to hold).
    """
    import onnx

    from pipelines.core.contract import EVENT_TYPES_NAME, INPUT_NAME, OUTPUT_IDS, OUTPUT_SCORES

    checks: list[GateCheck] = []

    def check(name: str, passed: bool, detail: str) -> bool:
        checks.append(GateCheck(name, passed, detail))
        return passed

    size = onnx_path.stat().st_size if onnx_path.is_file() else -1
    if not check("artifact file", size > 0, f"{onnx_path} ({size} bytes)" if size > 0 else
                 f"{onnx_path} is {'empty (0 bytes)' if size == 0 else 'missing'}: re-run the export_onnx stage"):
        return checks
    try:
        proto = onnx.load(str(onnx_path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - any decode/check error means the same: not a usable model
        check("artifact is valid ONNX", False, f"{onnx_path} is corrupt or truncated ({_one_line(exc)}); "
              "re-run export_onnx")
        return checks
    check("artifact is valid ONNX", True, f"opset {max((o.version for o in proto.opset_import), default=0)}, "
          f"{len(proto.graph.node)} nodes")
    from pipelines.repository.metadata import read_model_metadata

    try:
        meta = read_model_metadata(onnx_path)
    except ValueError as exc:
        check("artifact metadata", False, f"{exc} (not exported by pipelines.export.onnx)")
        return checks
    check("artifact metadata", True, "n_items, max_len, top_k present")
    if not check("catalogue size", meta.n_items == n_items,
                 f"model scores {meta.n_items} items, the current catalogue has {n_items}"
                 + ("" if meta.n_items == n_items else ": retrain on the current data")):
        return checks
    try:
        from pipelines.export.onnx import onnx_session

        session = onnx_session(onnx_path, threads=1)
    except Exception as exc:  # noqa: BLE001
        check("loads in ONNX Runtime", False, _one_line(exc))
        return checks
    inputs = {i.name: i.type for i in session.get_inputs()}
    outputs = {o.name: o.type for o in session.get_outputs()}
    want_in = {INPUT_NAME: "tensor(int64)"} | ({EVENT_TYPES_NAME: "tensor(int64)"} if EVENT_TYPES_NAME in inputs else {})
    want_out = {OUTPUT_IDS: "tensor(int64)", OUTPUT_SCORES: "tensor(float)"}
    wrong = [f"input {n!r} is {inputs.get(n, 'absent')}, must be {t}" for n, t in want_in.items() if inputs.get(n) != t]
    wrong += [f"unexpected input {n!r}" for n in inputs if n not in want_in]
    wrong += [f"output {n!r} is {outputs.get(n, 'absent')}, must be {t}" for n, t in want_out.items()
              if outputs.get(n) != t]
    if not check("serving contract", not wrong, "; ".join(wrong) if wrong else
                 f"inputs {sorted(inputs)}, outputs {sorted(outputs)} as pipelines/core/contract.py"):
        return checks
    try:
        from pipelines.export.onnx import onnx_top_k

        ids, scores = onnx_top_k(session, np.array([[0, 1, min(2, n_items)]], dtype=np.int64))
        top_k = meta.top_k
        ok = ids.shape == (1, top_k) and scores.shape == (1, top_k) and int(ids.min()) >= 1 \
            and int(ids.max()) <= n_items and bool(np.isfinite(scores).all())
        check("smoke inference", ok, f"one session -> ids {ids.shape} in [{int(ids.min())}, {int(ids.max())}]"
              + ("" if ok else f", expected ({1}, {top_k}) ids in [1, {n_items}] and finite scores"))
    except Exception as exc:  # noqa: BLE001
        check("smoke inference", False, _one_line(exc))
    return checks


# --------------------------------------------------------------------------- latency through Triton


GATE_MODEL_SUFFIX = "_gate_candidate"  # the challenger's name in the profile's Triton while it is measured


def triton_latency(onnx_path: Path, s: Settings, p: Paths, n_requests: int, seqs: Sequences) -> dict[str, float]:
    """p50/p95/max milliseconds of one-session requests to this ONNX model in a real Triton server.

    The sessions are validation histories of `seqs` (the gate's view). With RXREC_TRITON_URL set and a
    Triton answering there, the challenger is measured on the profile's Triton itself: loaded from files
    sent in the load request under its own name (`<model>_gate_candidate`, never the served model's name,
    nothing written to that server's repository) and unloaded afterwards, promoted or not. Else (local
    profile) a private model repository and a tritonserver on free ports, so a Triton already serving the
    champion is not disturbed; a remote profile whose Triton does not answer is an error naming the URL.
    """
    from pipelines.repository.metadata import read_model_metadata
    from pipelines.repository.versions import write_model_config, write_version
    from pipelines.serve.endpoint import resolve_triton

    endpoint = resolve_triton(s.serve)
    meta = read_model_metadata(onnx_path)
    repo = p.var / "gate" / "triton_repo"
    if repo.exists():
        shutil.rmtree(repo)
    name = s.serve.model_name
    write_model_config(repo, name, meta, max_batch_size=s.serve.max_batch_size, instance_count=1)
    version_dir = write_version(repo, name, onnx_path, metadata={"purpose": "promotion gate latency check"})
    histories, _, _ = seqs.evaluation(DECISION_SPLIT)
    sessions = [h[-meta.max_len:].tolist() for h in histories if len(h) >= 1][:n_requests]
    if endpoint.configured:
        from pipelines.serve.remote import RemoteTriton

        triton = RemoteTriton.at(endpoint)
        problem = triton.live_problem()
        if problem is None:
            return _latency_as_candidate(triton, f"{name}{GATE_MODEL_SUFFIX}", version_dir, sessions,
                                         s.serve.startup_timeout_s)
        if not endpoint.may_start_local:
            raise endpoint.unreachable(problem)
    from pipelines.serve.triton_server import TritonServer, find_free_port

    server = TritonServer(repo, http_port=find_free_port(), grpc_port=find_free_port(),
                          metrics_port=find_free_port(), startup_timeout_s=s.serve.startup_timeout_s,
                          log_dir=p.var / "gate" / "triton")
    with server:
        server.load(name, timeout_s=s.serve.startup_timeout_s)
        timings = _time_requests(server.url, name, sessions)
    return _percentiles(timings)


def _latency_as_candidate(triton: RemoteTriton, candidate: str, version_dir: Path, sessions: list[list[int]],
                          timeout_s: float) -> dict[str, float]:
    """Load the version folder's files into a running Triton as `candidate`, time the sessions, unload it.

    Unloaded whatever happens (a rejected challenger must not stay loaded); its name is never the served one.
    """
    from pipelines.serve.triton_server import TritonError

    files = {f"1/{f.name}": f.read_bytes() for f in sorted(version_dir.iterdir()) if f.is_file()}
    try:
        triton.load_files(candidate, (version_dir.parent / "config.pbtxt").read_text(), files, timeout_s=timeout_s)
        timings = _time_requests(triton.url, candidate, sessions)
    except BaseException:
        with contextlib.suppress(TritonError):  # a load that half-happened must not stay loaded either
            triton.unload(candidate)
        raise
    triton.unload(candidate)
    print(f"GATE: latency of the challenger measured on {triton.name} as {candidate!r} (unloaded again)")
    return _percentiles(timings)


def _time_requests(url: str, model_name: str, sessions: list[list[int]]) -> list[float]:
    """Milliseconds of one request per session, after three warm-up requests (session creation)."""
    from pipelines.serve.client import recommend

    for session in sessions[:3]:
        recommend([session], url=url, model_name=model_name)
    timings = []
    for session in sessions:
        started = time.perf_counter()
        recommend([session], url=url, model_name=model_name)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def _percentiles(timings: list[float]) -> dict[str, float]:
    values = np.array(timings)
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p95_ms": round(float(np.percentile(values, 95)), 2),
            "max_ms": round(float(values.max()), 2), "requests": float(len(values))}


# --------------------------------------------------------------------------- the decision


def decide(
    gate: GateSettings,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    *,
    parity_passed: bool,
    latency: dict[str, float] | None,
    training: Mapping[str, Any] | None = None,
) -> tuple[bool, list[GateCheck]]:
    """Pure decision over numbers: (promote, checks). Every check runs, so a reject lists every cause.

    `training`: the challenger's train.json (what stopped its training), checked when given.
    """
    checks: list[GateCheck] = []
    if training is not None:
        checks.append(training_check(gate, training))
    if gate.require_parity:
        checks.append(GateCheck("export parity", parity_passed,
                                "ONNX returns the eager model's top-k" if parity_passed
                                else "the ONNX model does not return the eager model's top-k"))
    if gate.latency_budget_ms > 0:
        if latency is None:
            checks.append(GateCheck("serving latency", False, "not measured"))
        else:
            ok = latency["p95_ms"] <= gate.latency_budget_ms
            checks.append(GateCheck("serving latency", ok, f"p95 {latency['p95_ms']:.1f} ms through Triton "
                                    f"{'<=' if ok else '>'} budget {gate.latency_budget_ms:.1f} ms"))
    pm = gate.primary_metric
    if pm not in challenger:
        raise KeyError(f"gate.primary_metric {pm!r} is not measured; choose one of {sorted(challenger)}")
    if champion is None:
        checks.append(GateCheck(pm, True, f"{challenger[pm]:.4f}, no champion yet"))
    else:
        need = champion[pm] + gate.min_improvement
        ok = challenger[pm] > need
        checks.append(GateCheck(pm, ok, f"challenger {challenger[pm]:.4f} {'>' if ok else '<='} champion "
                                f"{champion[pm]:.4f} + margin {gate.min_improvement:g}"))
        for metric, tolerance in gate.guard_tolerances.items():
            if metric not in challenger or metric not in champion:
                continue  # not available for this data (e.g. no cold-start targets)
            drop = champion[metric] - challenger[metric]
            ok = drop <= tolerance
            checks.append(GateCheck(f"guard {metric}", ok, f"challenger {challenger[metric]:.4f} vs champion "
                                    f"{champion[metric]:.4f}: drop {drop:+.4f} {'<=' if ok else '>'} "
                                    f"tolerance {tolerance:g}"))
    return all(c.passed for c in checks), checks


def training_check(gate: GateSettings, training: Mapping[str, Any]) -> GateCheck:
    """What stopped the challenger's training: a model its time budget cut short is named as such in the
    decision, and rejected when `gate.allow_time_budget_cut` is off."""
    stopped_by = training.get("stopped_by", "epochs")
    history = training.get("history") or []
    best = f"best epoch {training.get('best_epoch', '?')}"
    if stopped_by != "time_budget":
        how = "trained every epoch" if stopped_by == "epochs" else "stopped early by patience"
        return GateCheck("training", True, f"{how}: {training.get('epochs_run', len(history))} epochs, {best}")
    last = history[-1].get("fraction", 1.0) if history else 1.0
    detail = (f"cut by its time budget in epoch {len(history)} ({last:.0%} of it trained), {best} "
              f"({training.get('best_epoch_fraction', 1.0):.0%} of it trained)")
    allowed = gate.allow_time_budget_cut
    return GateCheck("training", allowed, detail + ("; allowed by gate.allow_time_budget_cut" if allowed else
                                                    "; gate.allow_time_budget_cut is off: train longer or raise "
                                                    "the budget"))


def reason_of(promote: bool, checks: list[GateCheck], champion_version: str | None) -> str:
    """One line for the registry tag and the log."""
    if promote:
        primary = next((c for c in checks if not c.name.startswith(("guard", "export", "serving", "training"))), None)
        return f"promoted: {primary.detail if primary else 'all checks passed'}"
    failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.passed)
    keeps = f"champion v{champion_version} kept" if champion_version else "no champion"
    return f"rejected ({keeps}): {failed}"
