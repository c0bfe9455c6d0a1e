"""What is served is what was evaluated: ask the real Triton and compare with what we computed here.

Asks the profile's Triton (pipelines/serve/endpoint.py: RXREC_TRITON_URL, else params.yaml's serve ports on
127.0.0.1) when it answers; it must serve the version folder deploy wrote (its newest ready version). When
nothing answers there, the local profile starts tritonserver over the deployed model repository on that port
(and stops it afterwards); any other profile fails with one line naming the URL. Then:

- gpt4rec: a few real sessions must get ONNX Runtime's answer on the same model.onnx;
- similar_items (when deployed): the sessions' last items must get ONNX Runtime's answer;
- recommend (when deployed): warm sessions must be answered by gpt4rec with gpt4rec's items, a
  purchased item must be filtered out, and an empty (cold) session must get the popularity list.

Used by the `serve_check` stage (the end of `make demo` and of the DAG).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.config import Paths, Settings
from pipelines.core.contract import MODEL_FILE, disagreeing_rows
from pipelines.data.schema import CATALOGUE_FILE
from pipelines.data.sequences import load_sequences
from pipelines.export.onnx import onnx_session, onnx_top_k
from pipelines.pharmacy.served import (
    PLACEMENTS,
    PLACEMENTS_FILE,
    POLICY_FILE,
    PlacementTables,
    PolicyRules,
    SafetyPolicy,
    SafetyTables,
)
from pipelines.repository.metadata import read_model_metadata
from pipelines.repository.models import RECOMMEND, SIMILAR_ITEMS
from pipelines.serve.client import pad_sessions, recommend, recommend_session, similar_items
from pipelines.serve.daemon import running_server
from pipelines.serve.endpoint import TritonEndpoint, resolve_triton
from pipelines.serve.remote import RemoteTriton
from pipelines.serve.triton_server import TritonServer


def sample_sessions(p: Paths, n: int, max_len: int) -> list[list[int]]:
    """Test histories of the first `n` users with at least 3 items (deterministic)."""
    histories, _, _ = load_sequences(p.features).evaluation("test")
    chosen = [h[-max_len:].tolist() for h in histories if len(h) >= 3][:n]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} sessions with 3+ items to query, {n} asked for")
    return chosen


def _same_ranking(ids: np.ndarray, scores: np.ndarray, want_ids: np.ndarray, want_scores: np.ndarray) -> bool:
    """Every row agrees with ONNX Runtime's top-k (near-tied items may swap between thread counts)."""
    return not disagreeing_rows(want_ids, want_scores, ids, scores).any()


def _deployed(deploy: dict[str, Any], name: str) -> Path | None:
    model = deploy.get("models", {}).get(name, {})
    return Path(model["version_path"]) if "version_path" in model else None


def served_policy(version_dir: Path) -> SafetyPolicy:
    """The safety policy a recommend version applies: its policy.npz and its config's policy_checks."""
    config = version_dir.parent / "config.pbtxt"
    found = re.search(r'key: "policy_checks" value: \{ string_value: "([^"]*)" \}',
                      config.read_text() if config.is_file() else "")
    rules = PolicyRules.from_checks(found.group(1)) if found and found.group(1) else PolicyRules()
    return SafetyPolicy(SafetyTables.load(version_dir / POLICY_FILE), rules)


def popularity_top_k(version_dir: Path, k: int, exclude: list[int] = ()) -> list[int]:
    """The popularity list a recommend version answers an empty session with (its own tables and policy)."""
    popularity = np.load(version_dir / "popularity.npy", allow_pickle=False)
    catalogue = np.load(version_dir / "catalogue.npy", allow_pickle=False).astype(bool)
    catalogue[0] = False
    items = np.flatnonzero(catalogue)
    order = items[np.lexsort((items, -popularity[items]))]
    if (version_dir / POLICY_FILE).is_file():
        policy = served_policy(version_dir)
        order = order[policy.allowed(order, policy.context())]
    return [int(i) for i in order if i not in set(exclude)][:k]


def check_similar_items(url: str, version_dir: Path, items: list[int]) -> dict[str, Any]:
    """similar_items through Triton vs ONNX Runtime on the same model.onnx, for items with a vector."""
    known = np.load(version_dir / "known.npy", allow_pickle=False)
    items = [i for i in items if 0 < i < len(known) and known[i]]
    if not items:
        return {"checked": 0, "matches_onnx_runtime": True}
    session = onnx_session(version_dir / "model.onnx")
    want_ids, want_scores = session.run(["item_ids", "scores"], {"item_id": np.array([[i] for i in items])})
    served = similar_items(items, url=url)
    ids = np.array([i for i, _ in served])
    scores = np.array([s for _, s in served], dtype=np.float32)
    matches = _same_ranking(ids, scores, want_ids, want_scores)
    if not matches:
        raise RuntimeError(f"similar_items through Triton differs from ONNX Runtime: served {ids.tolist()}, "
                           f"expected {want_ids.tolist()}")
    return {"checked": len(items), "matches_onnx_runtime": matches,
            "example": {"item_id": items[0], "similar": ids[0].tolist()}}


def check_recommend(url: str, version_dir: Path, sessions: list[list[int]],
                    gpt4rec_ids: np.ndarray) -> dict[str, Any]:
    """recommend: warm sessions via gpt4rec, purchased filtering, an empty session via popularity."""
    answers = recommend_session(sessions, url=url)
    k = len(answers[0].item_ids)
    catalogue = np.load(version_dir / "catalogue.npy", allow_pickle=False)
    policy = served_policy(version_dir)
    for session, answer, want in zip(sessions, answers, gpt4rec_ids):
        # recommend never offers the session's items, ids outside the catalogue or what its policy removes
        unseen = [int(i) for i in want if i not in session and 0 < i < len(catalogue) and catalogue[i]]
        unseen = [i for i, ok in zip(unseen, policy.allowed(np.array(unseen, dtype=np.int64),
                                                            policy.context(session=np.array(session))),
                                     strict=True) if ok]
        if answer.source == "gpt4rec" and answer.item_ids[: len(unseen)] != unseen:
            raise RuntimeError(f"recommend answered {answer.item_ids} from gpt4rec, gpt4rec says {want.tolist()}")
    bought = answers[0].item_ids[0]
    filtered = recommend_session(sessions[:1], purchased=[[bought]], url=url)[0]
    if bought in filtered.item_ids:
        raise RuntimeError(f"recommend returned purchased item {bought}: {filtered.item_ids}")
    cold = recommend_session([[]], url=url)[0]
    want_cold = popularity_top_k(version_dir, k)
    if cold.source != "popularity" or cold.item_ids != want_cold:
        raise RuntimeError(f"an empty session got {cold.item_ids} from {cold.source!r}, expected the popularity "
                           f"list {want_cold}")
    return {"sources": [a.source for a in answers], "purchased_filtered": bought,
            "cold_session": {"source": cold.source, "item_ids": cold.item_ids},
            "placements": check_placements(url, version_dir, sessions[0], k)}


def check_placements(url: str, version_dir: Path, session: list[int], k: int) -> dict[str, list[str]]:
    """Every placement answers one session with a full list (or says why not), a reason per item, and nothing its
    version's policy removes; search looks for the name of the session's latest product. {placement: codes}."""
    policy = served_policy(version_dir)
    names = PlacementTables.load(version_dir / PLACEMENTS_FILE).names
    query = str(names[session[-1]]) if session and session[-1] < len(names) and names[session[-1]] else "tablet"
    codes = {}
    for placement in PLACEMENTS:
        (answer,) = recommend_session([session], placement=placement, query=query if placement == "search" else None,
                                      url=url)
        shown = np.array([i for i in answer.item_ids if i > 0], dtype=np.int64)
        records = np.array(session[-1:] if placement == "product" else [], dtype=np.int64)
        allowed = policy.allowed(shown, policy.context(session=np.array(session), records=records))
        if not allowed.all() or (len(shown) < k and not answer.short_reason) or len(answer.reasons) != len(shown):
            raise RuntimeError(f"recommend on {placement!r} answered {answer.item_ids} (reasons {answer.reason_codes}, "
                               f"short: {answer.short_reason!r}): a removed item, or a short list or an item "
                               "without its reason")
        codes[placement] = answer.reason_codes
    return codes


def _server(s: Settings, p: Paths, endpoint: TritonEndpoint) -> contextlib.AbstractContextManager[
        TritonServer | RemoteTriton]:
    """The profile's Triton if it answers (`rxrec serve`'s, with its log, when that is the one); else, on the
    local profile only, a tritonserver of our own over the deployed repository on the endpoint's port."""
    ours = running_server(p)
    if ours is not None and ours.url == endpoint.http_url:
        return ours
    triton = RemoteTriton.at(endpoint)
    problem = triton.live_problem()
    if problem is None:
        return triton
    if not endpoint.may_start_local:
        raise endpoint.unreachable(problem)
    return TritonServer(p.triton_repo, http_port=endpoint.http_port, grpc_port=s.serve.grpc_port,
                        metrics_port=s.serve.metrics_port, startup_timeout_s=s.serve.startup_timeout_s,
                        log_dir=p.var / "triton")


def served_version(url: str, model_name: str) -> int | None:
    """The version a request without one gets from the Triton at `url`: its newest READY version."""
    return max(RemoteTriton(url).ready_versions(model_name), default=None)


def _ensure_loaded(server: TritonServer | RemoteTriton, name: str, version: int, timeout_s: float) -> float:
    """Seconds spent loading a model; none when the deployed version already answers (deploy loaded it)."""
    return 0.0 if server.model_ready(name, version) else server.load(name, timeout_s=timeout_s)


def check_served_model(s: Settings, p: Paths, n_sessions: int = 3) -> dict[str, Any]:
    deploy = json.loads((p.reports / "deploy.json").read_text())
    version_dir = Path(deploy["version_path"])
    onnx_path = version_dir / MODEL_FILE
    session = onnx_session(onnx_path)
    sessions = sample_sessions(p, n_sessions, read_model_metadata(onnx_path).max_len)
    expected_ids, expected_scores = onnx_top_k(session, pad_sessions(sessions))
    similar_dir, recommend_dir = _deployed(deploy, SIMILAR_ITEMS), _deployed(deploy, RECOMMEND)

    extra: dict[str, Any] = {}
    endpoint = resolve_triton(s.serve)
    with _server(s, p, endpoint) as server:
        load_seconds = _ensure_loaded(server, s.serve.model_name, int(deploy["triton_version"]),
                                      s.serve.startup_timeout_s)
        version = served_version(server.url, s.serve.model_name)
        if version != int(deploy["triton_version"]):
            raise RuntimeError(f"the Triton at {server.url} ({endpoint.source}) serves {s.serve.model_name} version "
                               f"{version}, deploy wrote version {deploy['triton_version']} ({version_dir}): does "
                               f"it serve the model repository {p.triton_repo}? (RXREC_TRITON_REPO)")
        started = time.perf_counter()
        answers = recommend(sessions, url=server.url, model_name=s.serve.model_name)
        latency_ms = (time.perf_counter() - started) * 1000
        start_seconds = server.start_seconds
        served_ids = np.array([ids for ids, _ in answers])
        served_scores = np.array([scores for _, scores in answers], dtype=np.float32)
        matches = _same_ranking(served_ids, served_scores, expected_ids, expected_scores)
        if matches and similar_dir is not None:
            _ensure_loaded(server, SIMILAR_ITEMS, int(similar_dir.name), s.serve.startup_timeout_s)
            extra[SIMILAR_ITEMS] = check_similar_items(server.url, similar_dir, [h[-1] for h in sessions])
        if matches and recommend_dir is not None:
            _ensure_loaded(server, RECOMMEND, int(recommend_dir.name), s.serve.startup_timeout_s)
            extra[RECOMMEND] = check_recommend(server.url, recommend_dir, sessions, served_ids)
    names = pd.read_parquet(p.validated / CATALOGUE_FILE, columns=["item_id", "name"]).set_index("item_id")[
        "name"
    ]
    summary = {
        "model": s.serve.model_name,
        "triton": server.url,
        "triton_source": endpoint.source,
        "triton_version": version,
        "registry_version": deploy["model_version"],
        "matches_onnx_runtime": matches,
        "server_start_s": round(start_seconds or 0.0, 2),
        "model_load_s": round(load_seconds, 2),
        "batch_latency_ms": round(latency_ms, 1),
        "sessions": [
            {
                "history": [{"item_id": i, "name": str(names.get(i, "?"))} for i in history[-5:]],
                "recommended": [
                    {"item_id": i, "name": str(names.get(i, "?")), "score": round(score, 4)}
                    for i, score in zip(ids, scores)
                ],
            }
            for history, (ids, scores) in zip(sessions, answers)
        ],
        **extra,
    }
    if not matches:
        raise RuntimeError(
            f"Triton's answer differs from ONNX Runtime's on the same model: served {served_ids.tolist()}, "
            f"expected {expected_ids.tolist()}"
        )
    return summary
