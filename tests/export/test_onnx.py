import numpy as np
import onnx
import pytest
import torch

from pipelines.export.onnx import _disagreeing_rows, check_parity, export_onnx, onnx_session, onnx_top_k
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig, left_pad


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


def test_near_ties_may_swap_but_real_differences_may_not():
    t_all = np.array([[-1e9, 5.0, 4.0, 3.0 + 1e-7, 3.0, 1.0]], dtype=np.float32)
    t_ids, t_scores = np.array([[1, 2, 3, 4]]), t_all[:, [1, 2, 3, 4]]
    assert not _disagreeing_rows(t_scores, t_all, t_ids).any()
    assert not _disagreeing_rows(t_scores, t_all, np.array([[1, 2, 4, 3]])).any()  # near-tie swapped
    assert _disagreeing_rows(t_scores, t_all, np.array([[2, 1, 3, 4]])).all()  # 5.0 vs 4.0: not a tie
    assert _disagreeing_rows(t_scores, t_all, np.array([[1, 2, 3, 5]])).all()  # a worse item got in


def test_parity_at_sequence_length_512(tmp_path):
    torch.manual_seed(1)
    model = GPT4Rec(GPT4RecConfig(n_items=200, dim=16, layers=1, heads=2, max_len=512, dropout=0.0)).eval()
    path = export_onnx(model, tmp_path, k=10, opset=18)
    rng = np.random.default_rng(1)
    sessions = [rng.integers(1, 201, size=n) for n in (1, 50, 512, 512, 700)]
    report = check_parity(model, path, sessions, k=10)
    assert report.passed and {1, 50, 512} <= set(report.lengths)
