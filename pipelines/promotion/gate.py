"""The promotion gate: may the registered challenger replace the champion?

Both models are scored here by the same code on the same split (the current test split, through
ONNX Runtime on the exported files, i.e. what would be served), so a champion trained on an older
data version is judged on today's data. The challenger must beat the champion on the primary metric
by a margin, no guard metric (coverage, cold-start HR) may drop by more than its tolerance, export
parity must hold, and the challenger's p95 latency through a real Triton server must stay under
the budget. Every check is kept with its numbers so the decision can be logged and printed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.config import GateSettings, Paths, Settings

MIN_COLD_USERS = 5  # fewer test users with a cold target: cold-start HR is "not available"


@dataclass
class GateCheck:
    """One condition of the gate, with the numbers it was decided on."""

    name: str
    passed: bool
    detail: str


@dataclass
class GateReport:
    """The decision and everything it rests on (written to gate.json, logged to MLflow)."""

    challenger_version: str
    champion_version: str | None
    promote: bool  # the gate's verdict
    applied: bool  # whether `champion` was actually moved (false on a dry run or a reject)
    reason: str
    checks: list[GateCheck] = field(default_factory=list)
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    compared_on: str = ""
    latency: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        from pipelines.core.files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    def table(self) -> str:
        """The decision as the task log shows it: one row per metric, both models side by side."""
        names = sorted(set(self.challenger_metrics) | set(self.champion_metrics))
        champ = f"champion v{self.champion_version}" if self.champion_version else "champion (none)"
        challenger = f"v{self.challenger_version}" if self.challenger_version else "(not registered)"
        lines = [f"PROMOTION GATE: {'PROMOTE' if self.promote else 'REJECT'} challenger "
                 f"{challenger}" + ("" if self.applied or not self.promote else " (dry run: "
                                                   "champion not moved)"),
                 f"  compared on: {self.compared_on}",
                 f"  {'metric':<24}{'challenger':>14}{champ:>22}"]
        for name in names:
            a, b = self.challenger_metrics.get(name), self.champion_metrics.get(name)
            lines.append(f"  {name:<24}{_fmt(a):>14}{_fmt(b):>22}")
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines.append(f"  reason: {self.reason}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


# --------------------------------------------------------------------------- scoring on one split


def onnx_metrics(onnx_path: Path, features: Path, k: int, batch_size: int = 512) -> dict[str, float]:
    """HR@k, NDCG@k, coverage@k and cold-start HR@k of an exported model on the test split.

    Computed from the model's own top-k output (masking and top-k are inside the ONNX graph), so it
    scores exactly what Triton would serve. "Cold" targets are items never seen in training.
    """
    from pipelines.data.sequences import load_sequences
    from pipelines.evaluate import metrics
    from pipelines.export.onnx import onnx_session, onnx_top_k
    from pipelines.serve.client import pad_sessions

    seqs = load_sequences(features)
    session = onnx_session(onnx_path)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    n_items, max_len, top_k = int(meta["n_items"]), int(meta["max_len"]), int(meta["top_k"])
    if n_items != seqs.n_items:
        raise IncompatibleModel(f"model has {n_items} items, the current catalogue {seqs.n_items}")
    k = min(k, top_k)
    histories, targets, _ = seqs.evaluation("test")
    kinds = seqs.evaluation_kinds("test")  # used by a graph with event_types; zeros for older data
    ranks = np.full(len(targets), k, dtype=np.int64)  # 0-based; k = not in the top-k
    recommended = np.zeros(n_items + 1, dtype=bool)
    for start in range(0, len(targets), batch_size):
        batch = [h.tolist() or [0] for h in histories[start:start + batch_size]]
        if kinds is None:
            ids, _ = onnx_top_k(session, pad_sessions(batch, max_len))
        else:
            batch_kinds = [row.tolist() or [0] for row in kinds[start:start + batch_size]]
            ids, _ = onnx_top_k(session, *pad_sessions(batch, max_len, batch_kinds))
        ids = ids[:, :k]
        recommended[ids.ravel()] = True
        hit = ids == targets[start:start + batch_size, None]
        rows, cols = np.nonzero(hit)
        ranks[start + rows] = cols
    seen = np.zeros(n_items + 1, dtype=bool)
    for history in seqs.train():
        seen[history] = True
    cold = ~seen[targets]
    out = {f"hr_at_{k}": metrics.hit_rate(ranks, k),
           f"ndcg_at_{k}": metrics.ndcg(ranks, k),
           f"coverage_at_{k}": float(recommended[1:].sum() / max(n_items, 1)),
           "n_users": float(len(targets))}
    if cold.sum() >= MIN_COLD_USERS:
        out[f"cold_start_hr_at_{k}"] = metrics.hit_rate(ranks[cold], k)
        out["cold_start_users"] = float(cold.sum())
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
    meta = {e.key: e.value for e in proto.metadata_props}
    missing = [k for k in ("n_items", "max_len", "top_k") if not str(meta.get(k, "")).isdigit()]
    if not check("artifact metadata", not missing, "n_items, max_len, top_k present" if not missing else
                 f"metadata {missing} missing or not integers: not exported by pipelines.export.onnx"):
        return checks
    if not check("catalogue size", int(meta["n_items"]) == n_items,
                 f"model scores {meta['n_items']} items, the current catalogue has {n_items}"
                 + ("" if int(meta["n_items"]) == n_items else ": retrain on the current data")):
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
        top_k = int(meta["top_k"])
        ok = ids.shape == (1, top_k) and scores.shape == (1, top_k) and int(ids.min()) >= 1 \
            and int(ids.max()) <= n_items and bool(np.isfinite(scores).all())
        check("smoke inference", ok, f"one session -> ids {ids.shape} in [{int(ids.min())}, {int(ids.max())}]"
              + ("" if ok else f", expected ({1}, {top_k}) ids in [1, {n_items}] and finite scores"))
    except Exception as exc:  # noqa: BLE001
        check("smoke inference", False, _one_line(exc))
    return checks


# --------------------------------------------------------------------------- latency through Triton


def triton_latency(onnx_path: Path, s: Settings, p: Paths, n_requests: int) -> dict[str, float]:
    """p50/p95/max milliseconds of one-session requests to this ONNX model in a real Triton server.

    A private model repository and free ports, so a Triton already serving the champion is not disturbed.
    """
    import onnx

    from pipelines.data.sequences import load_sequences
    from pipelines.repository.versions import write_config, write_version
    from pipelines.serve.client import recommend
    from pipelines.serve.triton_server import TritonServer, find_free_port

    meta = {e.key: e.value for e in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    repo = p.var / "gate" / "triton_repo"
    if repo.exists():
        shutil.rmtree(repo)
    name = s.serve.model_name
    write_config(repo, name, max_batch_size=s.serve.max_batch_size, top_k=int(meta["top_k"]),
                 n_items=int(meta["n_items"]), max_seq_len=int(meta["max_len"]), instance_count=1)
    write_version(repo, name, onnx_path, metadata={"purpose": "promotion gate latency check"})
    histories, _, _ = load_sequences(p.features).evaluation("test")
    sessions = [h[-int(meta["max_len"]):].tolist() for h in histories if len(h) >= 1][:n_requests]
    server = TritonServer(repo, http_port=find_free_port(), grpc_port=find_free_port(),
                          metrics_port=find_free_port(), startup_timeout_s=s.serve.startup_timeout_s,
                          log_dir=p.var / "gate" / "triton")
    with server:
        server.load(name, timeout_s=s.serve.startup_timeout_s)
        for session in sessions[:3]:  # warm-up: first requests pay for session creation
            recommend([session], url=server.url, model_name=name)
        timings = []
        for session in sessions:
            started = time.perf_counter()
            recommend([session], url=server.url, model_name=name)
            timings.append((time.perf_counter() - started) * 1000)
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
) -> tuple[bool, list[GateCheck]]:
    """Pure decision over numbers: (promote, checks). Every check runs, so a reject lists every cause."""
    checks: list[GateCheck] = []
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


def reason_of(promote: bool, checks: list[GateCheck], champion_version: str | None) -> str:
    """One line for the registry tag and the log."""
    if promote:
        primary = next((c for c in checks if not c.name.startswith(("guard", "export", "serving"))), None)
        return f"promoted: {primary.detail if primary else 'all checks passed'}"
    failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.passed)
    keeps = f"champion v{champion_version} kept" if champion_version else "no champion"
    return f"rejected ({keeps}): {failed}"
