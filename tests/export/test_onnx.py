import numpy as np
import onnx
import pytest
import torch

from pipelines.core.contract import left_pad
from pipelines.export.onnx import (
    TopKRecommender,
    check_parity,
    export_onnx,
    onnx_session,
    onnx_top_k,
)
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT4Rec(GPT4RecConfig(n_items=300, dim=32, layers=2, heads=2, max_len=50, dropout=0.1)).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx"), k=10, opset=18)
    return model, path


def test_parity_at_lengths_1_to_max(exported):
    model, path = exported
    rng = np.random.default_rng(0)
    sessions = [rng.integers(1, 301, size=n) for n in (1, 2, 7, 33, 50, 50, 80)]
    report = check_parity(model, path, sessions, k=10)
    assert report.passed and report.mismatched_sessions == 0
    assert 1 in report.lengths and 50 in report.lengths
    assert report.max_abs_score_diff < 1e-3


def test_graph_masks_padding_and_seen_items_and_carries_metadata(exported):
    _, path = exported
    ids, scores = onnx_top_k(onnx_session(path), left_pad([np.array([5, 6, 7]), np.array([9])], 50))
    assert ids.shape == (2, 10) and scores.dtype == np.float32
    assert not set(ids[0]) & {0, 5, 6, 7} and not set(ids[1]) & {0, 9}
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["n_items"] == "300" and meta["max_len"] == "50" and meta["top_k"] == "10"


def test_parity_detects_a_different_model(exported):
    model, path = exported
    other = GPT4Rec(model.config).eval()  # fresh random weights
    report = check_parity(other, path, [np.array([1, 2, 3])] * 4, k=10)
    assert not report.passed and report.mismatched_sessions > 0


def test_parity_at_sequence_length_512(tmp_path):
    torch.manual_seed(1)
    model = GPT4Rec(GPT4RecConfig(n_items=200, dim=16, layers=1, heads=2, max_len=512, dropout=0.0)).eval()
    path = export_onnx(model, tmp_path, k=10, opset=18)
    rng = np.random.default_rng(1)
    sessions = [rng.integers(1, 201, size=n) for n in (1, 50, 512, 512, 700)]
    report = check_parity(model, path, sessions, k=10)
    assert report.passed and {1, 50, 512} <= set(report.lengths)


def _kinded(max_len: int, seed: int) -> GPT4Rec:
    torch.manual_seed(seed)
    model = GPT4Rec(GPT4RecConfig(n_items=200, dim=16, layers=1, heads=2, max_len=max_len, dropout=0.0,
                                  event_kinds=4)).eval()
    with torch.no_grad():  # kinds strong enough to reorder the top-k
        model.kind_emb.weight[1:] *= 50
    return model


def test_graph_without_kinds_has_one_input(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_ids"]
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["event_kinds"] == "0"


@pytest.mark.parametrize("max_len", [50, 512])
def test_parity_with_event_kinds(tmp_path, max_len):
    model = _kinded(max_len, seed=2)
    path = export_onnx(model, tmp_path, k=10, opset=18)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input_ids", "event_types"]
    assert {p.key: p.value for p in proto.metadata_props}["event_kinds"] == "4"
    rng = np.random.default_rng(2)
    sessions = [rng.integers(1, 201, size=n) for n in (1, 3, 50, 50, max_len, max_len + 10)]
    report = check_parity(model, path, sessions, k=10)
    assert report.passed and {1, 50, max_len} <= set(report.lengths)
    assert report.max_abs_score_diff < 1e-3

    session = onnx_session(path)
    ids = left_pad([np.array([5, 6, 7]), np.array([9])], 3)
    unknown, _ = onnx_top_k(session, ids)  # no kinds given: zeros are fed
    zeros, _ = onnx_top_k(session, ids, np.zeros_like(ids))
    bought, _ = onnx_top_k(session, ids, np.array([[1, 1, 4], [0, 0, 4]]))
    assert np.array_equal(unknown, zeros) and not np.array_equal(unknown, bought)
    with torch.no_grad():
        want, _ = TopKRecommender(model, 10)(torch.from_numpy(ids), torch.tensor([[1, 1, 4], [0, 0, 4]]))
    assert np.array_equal(bought, want.numpy())
    with pytest.raises(ValueError, match="event_types has shape"):
        onnx_top_k(session, ids, np.zeros((2, 2), np.int64))
