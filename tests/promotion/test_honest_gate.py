"""The gate decides on validation and reads the test split once, after its decision is recorded.

A crafted world where validation and test disagree: every user's validation target is one of items
1..5 and their test target one of items 6..10. Two real ONNX graphs (fixed top-10 lists, the
serving contract, scored by the one evaluation protocol through ONNX Runtime) split those worlds:
`valid_expert` recommends 1..5 first, `test_expert` 6..10. A gate that decided on the test split
would pick the other model, so these tests fail for a gate that peeks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.config import Paths, load_settings
from pipelines.core.contract import INPUT_NAME, OUTPUT_IDS, OUTPUT_SCORES, ModelMetadata
from pipelines.data.sequences import Sequences
from pipelines.evaluate.protocol import TopKRanker, evaluate
from pipelines.evaluate.slices import cold_start_users
from pipelines.promotion import aliases
from pipelines.promotion.gate import onnx_metrics
from pipelines.promotion.register import run_gate
from pipelines.promotion.splits import SealedTestSplit, TestSplitSealed, validation_view
from pipelines.track.service import CHAMPION, GATE_TAG, MlflowService

N_ITEMS, TOP_K, N_USERS = 20, 10, 30
LATENCY = {"p50_ms": 1.0, "p95_ms": 2.0, "max_ms": 3.0, "requests": 40.0}


def crafted_world() -> Sequences:
    """History from items 11..20, validation target from 1..5, test target from 6..10, per user.

    The last user is too short to be evaluated (its items are training history only).
    """
    items = [np.array([11 + u % 5, 16 + u % 5, 1 + u % 5, 6 + u % 5], dtype=np.int64) for u in range(N_USERS - 1)]
    items.append(np.array([11, 12], dtype=np.int64))
    return Sequences(user_ids=np.arange(N_USERS), items=items,
                     times=[np.arange(len(s), dtype=np.float64) + u for u, s in enumerate(items)],
                     n_items=N_ITEMS, kinds=[np.full(len(s), 1 + u % 4, dtype=np.int8) for u, s in enumerate(items)])


def fixed_list_onnx(path: Path, ids: list[int]) -> Path:
    """A servable ONNX graph that answers the same top-k ids for every session (batch size from the input)."""
    import onnx
    from onnx import TensorProto, helper

    k = len(ids)
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "k"], ["out_shape"], axis=0),
        helper.make_node("Expand", ["fixed_ids", "out_shape"], [OUTPUT_IDS]),
        helper.make_node("Expand", ["fixed_scores", "out_shape"], [OUTPUT_SCORES]),
    ]
    constants = [
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("k", TensorProto.INT64, [1], [k]),
        helper.make_tensor("fixed_ids", TensorProto.INT64, [1, k], ids),
        helper.make_tensor("fixed_scores", TensorProto.FLOAT, [1, k], [float(k - i) for i in range(k)]),
    ]
    graph = helper.make_graph(nodes, "fixed_list", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64,
                                                                                  ["batch", "length"])],
                              [helper.make_tensor_value_info(OUTPUT_IDS, TensorProto.INT64, ["batch", k]),
                               helper.make_tensor_value_info(OUTPUT_SCORES, TensorProto.FLOAT, ["batch", k])],
                              initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, ModelMetadata(n_items=N_ITEMS, max_len=8, top_k=k).to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def experts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experts")
    return {"valid_expert": fixed_list_onnx(root / "valid_expert" / "model.onnx", [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]),
            "test_expert": fixed_list_onnx(root / "test_expert" / "model.onnx", [6, 7, 8, 9, 10, 16, 17, 18, 19, 20])}


# --------------------------------------------------------------------------- what the gate may read


def test_the_validation_view_holds_no_test_target_and_scores_validation_exactly_as_the_full_data():
    full = crafted_world()
    view = validation_view(full)
    assert not (view.evaluation("test")[1] != 0).any()  # every test target is padding
    assert all(k[-1] == 0 for k in view.kinds[:-1]) and view.items[-1].tolist() == [11, 12]
    assert [s.tolist() for s in view.train()] == [s.tolist() for s in full.train()]
    for got, want in zip(view.evaluation("valid"), full.evaluation("valid"), strict=True):
        assert np.array_equal(np.asarray(got, dtype=object), np.asarray(want, dtype=object))
    assert np.array_equal(cold_start_users(view, "valid", 0), cold_start_users(full, "valid", 0))
    ranker = TopKRanker("fixed", lambda histories, kinds: np.tile(np.arange(1, 11), (len(histories), 1)), 10, True)
    assert evaluate(ranker, view, split="valid") == evaluate(ranker, full, split="valid")
    assert evaluate(ranker, view, split="test")["hr_at_10"] == 0.0 < evaluate(ranker, full, split="test")["hr_at_10"]


def test_the_sealed_test_split_opens_once_and_only_for_a_decision():
    from pipelines.promotion.gate import GateReport

    reads: list[int] = []
    sealed = SealedTestSplit(lambda: reads.append(1) or crafted_world())
    with pytest.raises(TestSplitSealed, match="sealed until the gate has decided"):
        sealed.open(GateReport("2", None, False, False, ""))
    assert reads == []
    assert len(sealed.open(GateReport("2", None, True, True, "promoted: ..."))) == N_USERS
    with pytest.raises(TestSplitSealed, match="already read once"):
        sealed.open(GateReport("2", None, True, True, "promoted: ..."))
    assert reads == [1]


def test_the_experts_disagree_between_validation_and_test(experts):
    """The premise of the gate tests below: on test, the validation expert is the worse model."""
    full = crafted_world()
    valid = {n: onnx_metrics(path, full, "valid", 10, 0) for n, path in experts.items()}
    test = {n: onnx_metrics(path, full, "test", 10, 0) for n, path in experts.items()}
    assert valid["valid_expert"]["ndcg_at_10"] > 0 == valid["test_expert"]["ndcg_at_10"]
    assert test["test_expert"]["ndcg_at_10"] > 0 == test["valid_expert"]["ndcg_at_10"]


# --------------------------------------------------------------------------- the gate, end to end on a registry


def _gate(registry: MlflowService, name: str, experts: dict[str, Path], champion: str, challenger: str,
          tmp_path: Path) -> tuple[dict, list[str], Paths, str]:
    """Register `champion` (made champion) and `challenger`, run the gate with a poisoned test split."""
    paths = Paths(tmp_path)
    parent = registry.pipeline_run("", f"retrain {name}", {})
    for expert in (champion, challenger):
        registry.log_onnx_model(registry.child_run(parent, expert, {}), experts[expert], name, {})
    aliases.promote(registry, name, "1")
    full = crafted_world()
    reads: list[str] = []

    def poisoned_test_split() -> Sequences:
        """Unreadable until the decision is on the version, in gate.json and on the parent run."""
        decided = registry.get_version(name, "2").tags.get(GATE_TAG)
        recorded = (paths.reports / "gate.json").exists() and \
            "gate.decision" in registry.client.get_run(parent).data.tags
        if not (decided and recorded):
            raise AssertionError("the test split was read before the gate's decision was recorded")
        reads.append(decided)
        return full

    report = run_gate(registry, load_settings(), paths, name, "2", experts[challenger], parent, "data-md5",
                      valid=validation_view(full), test_split=SealedTestSplit(poisoned_test_split),
                      parity_passed=True, latency=LATENCY)
    return report.to_dict(), reads, paths, parent


def test_a_challenger_better_on_validation_but_worse_on_test_is_promoted_on_validation(registry, request,
                                                                                       experts, tmp_path):
    name = request.node.name
    gate, reads, paths, parent = _gate(registry, name, experts, "test_expert", "valid_expert", tmp_path)
    assert gate["applied"] and str(registry.alias_version(name, CHAMPION).version) == "2", gate["reason"]
    assert gate["decided_on"] == "validation"
    assert gate["valid_challenger"]["ndcg_at_10"] > gate["valid_champion"]["ndcg_at_10"] == 0.0
    # The test figures are reported as they are: worse for the promoted challenger.
    assert gate["test_challenger"]["ndcg_at_10"] == 0.0 < gate["test_champion"]["ndcg_at_10"]
    assert gate["test_reported_on"] == "test split of data data-md5 (ONNX Runtime, both models)"
    assert len(reads) == 1 and reads[0].startswith("promoted: ")  # read once, after the decision
    assert json.loads((paths.reports / "gate.json").read_text()) == gate
    metrics = registry.client.get_run(parent).data.metrics
    assert metrics["gate.valid.challenger.ndcg_at_10"] == gate["valid_challenger"]["ndcg_at_10"]
    assert metrics["report.test.champion.ndcg_at_10"] == gate["test_champion"]["ndcg_at_10"]
    assert not any(key.startswith(("gate.test", "report.valid")) for key in metrics)
    assert aliases.moves(registry, name)[-1]["by"] == "gate"
    description = registry.get_version(name, "2").description  # the decision table on the version's page
    assert "decided on the validation split" in description and "| ndcg_at_10 | test (report only) |" in description


def test_a_challenger_better_on_test_but_worse_on_validation_is_rejected(registry, request, experts, tmp_path):
    name = request.node.name
    gate, reads, _, _ = _gate(registry, name, experts, "valid_expert", "test_expert", tmp_path)
    assert not gate["promote"] and str(registry.alias_version(name, CHAMPION).version) == "1"
    assert gate["reason"].startswith("rejected (champion v1 kept): ndcg_at_10: challenger 0.0000 <= champion")
    assert gate["test_challenger"]["ndcg_at_10"] > gate["test_champion"]["ndcg_at_10"] == 0.0
    assert len(reads) == 1 and reads[0] == gate["reason"]
