"""Zero-downtime promotion: a new version folder is loaded while >= 100 requests/s run against the model.

The old version answers until the new one is ready; no request fails; answers switch to the new
version (its number in every gRPC answer, and its own top item, which differs from the old one's).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from benchmarks.load import LoadGenerator, LoadLevel, LoadResult
from pipelines.repository.versions import write_config, write_version
from tests.serve.toy_triton import (
    MAX_BATCH,
    MAX_SEQ_LEN,
    N_ITEMS,
    TOP_K,
    export_toy_onnx,
    loaded,
    toy_top_item,
)

pytestmark = pytest.mark.slow
MODEL = "gpt4rec_promotion"  # its own name in the session's shared Triton
RATE = 150


def test_promotion_under_load_drops_nothing_and_switches(triton, tmp_path) -> None:
    old_onnx = export_toy_onnx(tmp_path / "old.onnx", seed=1)
    new_onnx = export_toy_onnx(tmp_path / "new.onnx", seed=2)
    session = next(s for s in ([i, (i * 7) % N_ITEMS + 1, (i * 13) % N_ITEMS + 1] for i in range(1, N_ITEMS))
                   if toy_top_item(old_onnx, s) != toy_top_item(new_onnx, s))  # the versions disagree here
    old_top, new_top = toy_top_item(old_onnx, session), toy_top_item(new_onnx, session)

    repo = triton.repo
    write_config(repo, MODEL, max_batch_size=MAX_BATCH, top_k=TOP_K, n_items=N_ITEMS, max_seq_len=MAX_SEQ_LEN)
    assert write_version(repo, MODEL, old_onnx, metadata={"test": "old"}).name == "1"
    with loaded(triton, MODEL) as server, \
            LoadGenerator(f"127.0.0.1:{server.grpc_port}", workers=1) as generator:
        level = LoadLevel(rate_per_s=RATE, duration_s=12.0, warmup_s=0.0, concurrency=64, timeout_s=10)
        outcome: dict[str, LoadResult] = {}
        load_thread = threading.Thread(
            target=lambda: outcome.setdefault("result", generator.run(MODEL, [np.asarray(session)], level)))
        load_thread.start()
        time.sleep(generator.start_delay_s + 2.0)  # the old version has been answering for 2 s

        promoted_at = time.monotonic()
        assert write_version(repo, MODEL, new_onnx, metadata={"test": "new"}).name == "2"
        server.load(MODEL, timeout_s=60)  # the repository API: loads version 2, 1 serves meanwhile
        ready_at = time.monotonic()
        load_thread.join(timeout=60)
        assert server.model_ready(MODEL, version=2)

    result = outcome["result"]
    print(f"\n{result.requests} requests at {result.achieved_rps} req/s, p99 {result.p99_ms} ms, "
          f"versions {result.versions}; new version ready {ready_at - promoted_at:.2f}s after the write")
    assert result.errors == 0, result.error_messages
    assert result.achieved_rps >= 100 and result.requests >= 100 * level.duration_s
    assert ready_at < promoted_at + level.duration_s - 2.0, "the load ended before the switch could be seen"

    record = generator.last_records[0]
    versions = np.asarray(record.versions)
    assert set(versions) == {"1", "2"}
    before, after = record.sent < promoted_at, record.sent > ready_at + 0.5
    assert (versions[before] == "1").all() and (record.first_items[before] == old_top).all()
    assert after.sum() >= 100 and (versions[after] == "2").all() and (record.first_items[after] == new_top).all()
    answered_by = dict(zip(versions.tolist(), record.first_items.tolist(), strict=True))
    assert answered_by == {"1": old_top, "2": new_top}  # each version always gave its own answer
