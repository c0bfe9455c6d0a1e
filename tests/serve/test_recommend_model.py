"""The `recommend` entry point on the real tritonserver: BLS to gpt4rec, unknown ids, cold sessions, filters,
and the same answers when it scores with its own copy of gpt4rec's model in process.

A tiny repository: a toy gpt4rec (masked mean of item embeddings, top-5, no seen-item masking, so
recommend's own filtering and backfill are exercised) and hand-made fallback tables where
items 1..30 are warm, 31..35 are new (cold) products, 36..40 are ids outside the catalogue, and
item 31 has association rules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.repository.models import FallbackTables, write_recommend_config, write_recommend_version
from pipelines.repository.versions import write_config, write_version
from pipelines.serve.client import pad_sessions, recommend_session
from pipelines.serve.triton_server import TritonServer, default_venv
from tests.serve.toy_triton import export_toy_onnx, loaded

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (default_venv() / "bin" / "python").exists(),
                       reason="Triton serving venv missing: run `make setup` (infra/triton/setup.sh)"),
]

N_ITEMS, K = 40, 5
CATALOGUE = np.r_[False, np.ones(35, bool), np.zeros(5, bool)]  # ids 36..40 are not products
INTERACTIONS = np.r_[0, np.full(30, 5), np.zeros(10, int)].astype(np.int64)  # 31..35: no training data
POPULARITY = np.r_[0.0, (np.arange(1, N_ITEMS + 1) * 7) % 41].astype(np.float32)  # distinct scores
RULES = {31: {32: 0.9, 12: 0.5}, 34: {36: 0.8, 2: 0.3}}  # 34 -> 36: 36 is not a product, never offered

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
tritonclient_utils = pytest.importorskip("tritonclient.utils")


def _tables() -> FallbackTables:
    rows, cols, vals = zip(*[(a, b, v) for a, targets in RULES.items() for b, v in targets.items()])
    rules = sp.csr_matrix((vals, (rows, cols)), shape=(N_ITEMS + 1, N_ITEMS + 1), dtype=np.float32)
    return FallbackTables(POPULARITY, INTERACTIONS, CATALOGUE, rules)


@pytest.fixture(scope="module")
def served(triton: TritonServer, tmp_path_factory):
    root = tmp_path_factory.mktemp("recommend_serving")
    repo = triton.repo
    onnx_path = export_toy_onnx(root / "toy.onnx", seed=0)
    write_config(repo, "gpt4rec", max_batch_size=16, top_k=K, n_items=N_ITEMS)
    write_version(repo, "gpt4rec", onnx_path, metadata={})
    common = {"top_k": K, "n_items": N_ITEMS, "max_batch_size": 16, "gpt4rec_max_len": 20,
              "gpt4rec_max_batch_size": 16}
    write_recommend_config(repo, **common)
    write_recommend_version(repo, _tables(), metadata={})
    write_recommend_config(repo, **common, filter_purchased=False, model_name="recommend_keep")
    write_recommend_version(repo, _tables(), metadata={}, model_name="recommend_keep")
    kinds_onnx = _gpt4rec_with_kinds(root / "kinds")  # a real GPT4Rec that reads event kinds
    write_config(repo, "gpt4rec_kinds", max_batch_size=16, top_k=K, n_items=N_ITEMS, event_kinds=4)
    write_version(repo, "gpt4rec_kinds", kinds_onnx, metadata={})
    write_recommend_config(repo, **common, gpt4rec_model="gpt4rec_kinds", model_name="recommend_kinds")
    write_recommend_version(repo, _tables(), metadata={}, model_name="recommend_kinds")
    for name, scorer in (("recommend_inproc", _with_n_items(onnx_path, root / "scorer.onnx")),
                         ("recommend_kinds_inproc", kinds_onnx)):
        write_recommend_config(repo, **common, gpt4rec_scoring="in_process", model_name=name)
        write_recommend_version(repo, _tables(), metadata={}, scorer=scorer, model_name=name)
    with loaded(triton, "gpt4rec", "recommend", "recommend_keep", "gpt4rec_kinds", "recommend_kinds",
                "recommend_inproc", "recommend_kinds_inproc") as server:
        yield server, ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def _with_n_items(onnx_path: Path, out: Path) -> Path:
    """The toy with the metadata a real export carries (n_items): what an in-process scorer checks on load."""
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(model, {"n_items": str(N_ITEMS)})
    onnx.save(model, str(out))
    return out


def _gpt4rec_with_kinds(out_dir: Path) -> Path:
    from pipelines.export.onnx import export_onnx
    from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig

    torch.manual_seed(4)
    model = GPT4Rec(GPT4RecConfig(n_items=N_ITEMS, dim=16, layers=1, heads=2, max_len=20, dropout=0.0,
                                  event_kinds=4)).eval()
    with torch.no_grad():  # kinds strong enough to change the top-k
        model.kind_emb.weight[1:] *= 50
    return export_onnx(model, out_dir, k=K, opset=18)


def _popular(exclude: set[int], n: int = K) -> list[int]:
    items = np.flatnonzero(CATALOGUE)
    order = items[np.lexsort((items, -POPULARITY[items]))]
    return [int(i) for i in order if i not in exclude][:n]


def _gpt4rec_then_popularity(session, known: list[int], exclude: set[int]) -> list[int]:
    """What recommend must answer for a warm session: gpt4rec's unseen items, topped up by popularity."""
    ids, _ = session.run(["item_ids", "scores"], {"input_ids": pad_sessions([known])})
    first = [int(i) for i in ids[0] if i not in exclude and CATALOGUE[i]]
    return first + _popular(exclude | set(first), K - len(first))


def test_warm_session_is_answered_by_gpt4rec(served) -> None:
    server, gpt4rec = served
    (answer,) = recommend_session([[3, 17, 8]], url=server.url)
    assert answer.source == "gpt4rec" and answer.unknown_ids == []
    assert answer.item_ids == _gpt4rec_then_popularity(gpt4rec, [3, 17, 8], {3, 17, 8})
    assert len(set(answer.item_ids)) == K and all(CATALOGUE[i] for i in answer.item_ids)
    # the toy's own top-k offers ids outside the catalogue for this session: recommend drops them
    raw, _ = gpt4rec.run(["item_ids", "scores"], {"input_ids": pad_sessions([[3, 17, 8]])})
    assert not all(CATALOGUE[raw[0]]), "test data no longer exercises the catalogue filter"


def test_unknown_ids_are_dropped_and_reported(served) -> None:
    server, _ = served
    answer, clean = recommend_session([[3, 999, 17, 37], [3, 17]], url=server.url)
    assert answer.unknown_ids == [999, 37] and clean.unknown_ids == []
    assert answer.item_ids == clean.item_ids and answer.source == "gpt4rec"
    (only_unknown,) = recommend_session([[999, 38]], url=server.url)
    assert only_unknown.source == "popularity" and only_unknown.item_ids == _popular(set())


def test_empty_session_gets_the_popularity_list(served) -> None:
    server, _ = served
    (answer,) = recommend_session([[]], url=server.url)  # sent as [[0]]: all padding
    assert answer.source == "popularity" and answer.item_ids == _popular(set())
    assert answer.scores == [float(POPULARITY[i]) for i in answer.item_ids]


def test_cold_session_uses_rules_then_popularity(served) -> None:
    server, _ = served
    rules, no_rules, outside = recommend_session([[31], [33], [34]], url=server.url)
    assert rules.source == "rules" and rules.item_ids[:2] == [32, 12]
    assert rules.scores[:2] == pytest.approx([0.9, 0.5])
    assert rules.item_ids[2:] == _popular({31, 32, 12}, K - 2)  # topped up by popularity
    assert no_rules.source == "popularity" and no_rules.item_ids == _popular({33})
    assert outside.source == "rules" and outside.item_ids[0] == 2 and 36 not in outside.item_ids


def test_purchased_items_are_filtered(served) -> None:
    server, gpt4rec = served
    plain = recommend_session([[3, 17, 8], []], url=server.url)
    bought = [[plain[0].item_ids[0], 30], [plain[1].item_ids[0]]]
    filtered = recommend_session([[3, 17, 8], []], purchased=bought, url=server.url)
    assert filtered[0].item_ids == _gpt4rec_then_popularity(gpt4rec, [3, 17, 8], {3, 17, 8, *bought[0]})
    assert filtered[1].item_ids == _popular(set(bought[1]))
    assert all(len(a.item_ids) == K and not set(a.item_ids) & set(b) for a, b in zip(filtered, bought))
    # filter_purchased=false in the config: the same request keeps them
    kept = recommend_session([[3, 17, 8], []], purchased=bought, url=server.url, model_name="recommend_keep")
    assert [a.item_ids for a in kept] == [a.item_ids for a in plain]


def test_mixed_batch_over_grpc(served) -> None:
    server, _ = served
    sessions = [[3, 17, 8], [], [31], [999]]
    over_grpc = recommend_session(sessions, url=f"127.0.0.1:{server.grpc_port}", protocol="grpc")
    over_http = recommend_session(sessions, url=server.url)
    assert over_grpc == over_http
    assert [a.source for a in over_grpc] == ["gpt4rec", "popularity", "rules", "popularity"]


def test_negative_ids_are_rejected(served) -> None:
    server, _ = served
    with pytest.raises(ValueError, match="negative item id -2"):
        recommend_session([[1, -2]], url=server.url)
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.url)
    try:
        infer_input = httpclient.InferInput("session_ids", [1, 2], "INT64")
        infer_input.set_data_from_numpy(np.array([[4, -1]], dtype=np.int64))
        with pytest.raises(tritonclient_utils.InferenceServerException, match="negative id -1.*0 is padding"):
            client.infer("recommend", [infer_input])
    finally:
        client.close()


def test_gpt4rec_down_falls_back_instead_of_failing(served) -> None:
    server, _ = served
    server.unload("gpt4rec")
    log_start = server.log_path.stat().st_size
    try:
        (answer,) = recommend_session([[3, 17]], url=server.url)
        assert answer.source == "popularity" and answer.item_ids == _popular({3, 17})
        assert server.wait_for_log("gpt4rec failed", offset=log_start), server.log_tail(200)
        (own,) = recommend_session([[3, 17]], url=server.url, model_name="recommend_inproc")
        assert own.source == "gpt4rec"  # scoring in process, it does not need the gpt4rec model
    finally:
        server.load("gpt4rec", timeout_s=120)
    assert recommend_session([[3, 17]], url=server.url)[0].source == "gpt4rec"


def test_event_kinds_reach_gpt4rec_aligned_with_the_kept_items(served, tmp_path) -> None:
    from pipelines.export.onnx import onnx_session, onnx_top_k

    server, _ = served
    kinds_session = onnx_session(Path(server.repo) / "gpt4rec_kinds" / "1" / "model.onnx")

    def expected(known: list[int], kinds: list[int]) -> list[int]:
        ids, _ = onnx_top_k(kinds_session, np.asarray([known]), np.asarray([kinds]))
        first = [int(i) for i in ids[0] if CATALOGUE[i]]
        return first + _popular(set(known) | set(first), K - len(first))

    answers = set()
    for kinds in (["view", "view", "view"], ["view", "click", "purchase"], [4, 4, 3], [0, 0, 0]):
        (answer,) = recommend_session([[3, 17, 8]], kinds=[kinds], url=server.url, model_name="recommend_kinds")
        codes = [{"view": 1, "click": 2, "purchase": 4}.get(k, k) for k in kinds]
        assert answer.source == "gpt4rec" and answer.item_ids == expected([3, 17, 8], codes), kinds
        answers.add(tuple(answer.item_ids))
    assert len(answers) > 1
    (plain,) = recommend_session([[3, 17, 8]], url=server.url, model_name="recommend_kinds")
    assert plain.item_ids == expected([3, 17, 8], [0, 0, 0])  # no kinds sent: unknown
    # 999 and 37 are dropped; the kinds of 3 and 17 (view, purchase) go with them
    (dropped,) = recommend_session([[3, 999, 17, 37]], kinds=[[1, 2, 4, 3]], url=f"127.0.0.1:{server.grpc_port}",
                                   protocol="grpc", model_name="recommend_kinds")
    assert dropped.unknown_ids == [999, 37] and dropped.item_ids == expected([3, 17], [1, 4])


def test_kinds_sent_to_a_gpt4rec_without_them_are_dropped(served) -> None:
    server, gpt4rec = served
    (answer,) = recommend_session([[3, 17, 8]], kinds=[["view", "click", "purchase"]], url=server.url)
    assert answer.source == "gpt4rec" and answer.item_ids == _gpt4rec_then_popularity(gpt4rec, [3, 17, 8], {3, 17, 8})


def test_bad_event_kinds_are_rejected(served) -> None:
    server, _ = served
    with pytest.raises(ValueError, match="event kind 'bought'"):
        recommend_session([[3, 17]], kinds=[["view", "bought"]], url=server.url)
    with pytest.raises(ValueError, match="session 0 has 2 items but 1 event kinds"):
        recommend_session([[3, 17]], kinds=[["view"]], url=server.url)
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.url)
    try:
        for kinds, message in ((np.array([[1, 7]]), "kind 7; kinds are 0..4"), (np.array([[1, -1]]), "kind -1"),
                               (np.array([[1, 1, 1]]), "must have the shape of session_ids")):
            inputs = [httpclient.InferInput("session_ids", [1, 2], "INT64"),
                      httpclient.InferInput("event_types", list(kinds.shape), "INT64")]
            inputs[0].set_data_from_numpy(np.array([[3, 17]], dtype=np.int64))
            inputs[1].set_data_from_numpy(kinds.astype(np.int64))
            with pytest.raises(tritonclient_utils.InferenceServerException, match=message):
                client.infer("recommend_kinds", inputs)
    finally:
        client.close()
    assert server.model_ready("recommend_kinds")


def test_in_process_scoring_answers_what_the_bls_call_answers(served) -> None:
    server, _ = served
    long_session = [int(i) for i in np.arange(1, 26) % 30 + 1]  # 25 items: the latest gpt4rec_max_len (20) count
    sessions = [[3, 17, 8], [], [31], [999], [3, 999, 17, 37], long_session, [5]]
    purchased = [[1, 2], [], [], [], [4], [], [9, 10, 11]]
    for protocol, url in (("http", server.url), ("grpc", f"127.0.0.1:{server.grpc_port}")):
        bls = recommend_session(sessions, purchased=purchased, url=url, protocol=protocol)
        own = recommend_session(sessions, purchased=purchased, url=url, protocol=protocol,
                                model_name="recommend_inproc")
        assert own == bls, protocol
    assert [a.source for a in own][:4] == ["gpt4rec", "popularity", "rules", "popularity"]
    for kinds in (["view", "click", "purchase"], [4, 4, 3], [0, 0, 0]):
        bls_kinds = recommend_session([[3, 17, 8]], kinds=[kinds], url=server.url, model_name="recommend_kinds")
        own_kinds = recommend_session([[3, 17, 8]], kinds=[kinds], url=server.url, model_name="recommend_kinds_inproc")
        assert own_kinds == bls_kinds and own_kinds[0].source == "gpt4rec", kinds
    assert (recommend_session([[3, 17, 8]], url=server.url, model_name="recommend_kinds_inproc")
            == recommend_session([[3, 17, 8]], url=server.url, model_name="recommend_kinds"))


def test_in_process_scoring_without_its_model_refuses_to_load(served) -> None:
    from pipelines.serve.triton_server import TritonModelLoadError

    server, _ = served
    common = {"top_k": K, "n_items": N_ITEMS, "max_batch_size": 16, "gpt4rec_max_len": 20,
              "gpt4rec_max_batch_size": 16, "gpt4rec_scoring": "in_process"}
    repo = Path(server.repo)
    write_recommend_config(repo, **common, model_name="recommend_no_scorer")
    write_recommend_version(repo, _tables(), metadata={}, model_name="recommend_no_scorer")
    with pytest.raises(TritonModelLoadError, match="gpt4rec.onnx is not in .*redeploy"):
        server.load("recommend_no_scorer", timeout_s=120)
    toy = repo / "gpt4rec" / "1" / "model.onnx"  # no n_items in its metadata: cannot be checked against the tables
    write_recommend_config(repo, **common, model_name="recommend_unsized")
    write_recommend_version(repo, _tables(), metadata={}, scorer=toy, model_name="recommend_unsized")
    with pytest.raises(TritonModelLoadError, match="scores n_items=\\? but the tables cover 40"):
        server.load("recommend_unsized", timeout_s=120)
