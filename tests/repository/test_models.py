"""similar_items and recommend in the model repository: configs, version folders, fallback tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipelines.core.config import Paths
from pipelines.models.user_vectors import UserVectors
from pipelines.pharmacy.search import SearchIndex
from pipelines.pharmacy.served import SafetyTables
from pipelines.repository.models import (
    PHARMACY_PY,
    RECOMMEND_BACKEND_PY,
    SEARCH_PY,
    SIMILAR_BACKEND_PY,
    USERS_PY,
    FallbackTables,
    fingerprint,
    write_model_version,
    write_recommend_config,
    write_recommend_version,
    write_similar_items_config,
    write_similar_items_version,
)
from pipelines.repository.versions import BACKEND_COMMON_PY
from pipelines.serve.daemon import model_load_order


def _parse(path: Path):
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()), model_config_pb2


def test_similar_items_config_is_a_valid_triton_config(tmp_path: Path) -> None:
    cfg, pb = _parse(write_similar_items_config(tmp_path, top_k=7, n_items=300, max_batch_size=32, instance_count=2))
    assert cfg.name == "similar_items" and cfg.backend == "python" and cfg.max_batch_size == 32
    (inp,) = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("item_id", pb.TYPE_INT64, [1])
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs == {"item_ids": (pb.TYPE_INT64, [7]), "scores": (pb.TYPE_FP32, [7])}
    assert cfg.HasField("dynamic_batching") and cfg.instance_group[0].count == 2
    assert cfg.version_policy.latest.num_versions == 1
    assert {k: v.string_value for k, v in cfg.parameters.items()}["n_items"] == "300"


def test_recommend_config_is_a_valid_triton_config(tmp_path: Path) -> None:
    path = write_recommend_config(tmp_path, top_k=10, n_items=500, max_batch_size=16, gpt4rec_max_len=50,
                                  gpt4rec_max_batch_size=64, filter_purchased=False, rules_decay=0.25)
    cfg, pb = _parse(path)
    assert cfg.name == "recommend" and cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")
    inputs = {i.name: i for i in cfg.input}
    assert list(inputs["session_ids"].dims) == [-1] and not inputs["session_ids"].optional
    assert inputs["purchased_ids"].optional and inputs["purchased_ids"].data_type == pb.TYPE_INT64
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs == {"item_ids": (pb.TYPE_INT64, [10]), "scores": (pb.TYPE_FP32, [10]),
                    "source": (pb.TYPE_STRING, [1]), "unknown_ids": (pb.TYPE_INT64, [-1]),
                    "policy_removed": (pb.TYPE_INT64, [5]), "short_reason": (pb.TYPE_STRING, [1]),
                    "reason_codes": (pb.TYPE_STRING, [10]), "reasons": (pb.TYPE_STRING, [10])}
    assert inputs["cart_ids"].optional and inputs["prescribed_ids"].optional and inputs["placement"].optional
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["policy_checks"] == "restricted,unavailable,rx_without_record,interacts,duplicate_molecule"
    assert params["placement_product"] == "substitutes:4,personal:6", "params.yaml defaults when none are given"
    assert params["gpt4rec_model"] == "gpt4rec" and params["filter_purchased"] == "false"
    assert params["rules_decay"] == "0.25" and params["gpt4rec_max_len"] == "50"
    assert params["gpt4rec_scoring"] == "bls", "without a scorer in the version it calls the gpt4rec model"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"top_k": 0}, "top_k"), ({"max_batch_size": -1}, "max_batch_size"), ({"rules_decay": 0.0}, "rules_decay"),
    ({"gpt4rec_model": "../x"}, "invalid model name"),
    ({"gpt4rec_scoring": "inline"}, "gpt4rec_scoring must be one of"),
])
def test_recommend_config_rejects_bad_values(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"top_k": 10, "n_items": 5, "max_batch_size": 4, "gpt4rec_max_len": 8, "gpt4rec_max_batch_size": 4}
    with pytest.raises(ValueError, match=message):
        write_recommend_config(tmp_path, **{**args, **kwargs})
    assert not (tmp_path / "recommend" / "config.pbtxt").exists()


def test_versions_are_new_folders_only_when_content_changes(tmp_path: Path) -> None:
    first = write_model_version(tmp_path, "m", {"a.bin": b"one", "model.py": SIMILAR_BACKEND_PY}, metadata={"x": 1})
    assert first.new and first.version == 1 and (first.path / "a.bin").read_bytes() == b"one"
    lineage = json.loads((first.path / "lineage.json").read_text())
    assert lineage["fingerprint"] == first.fingerprint and lineage["metadata"] == {"x": 1}
    assert set(lineage["files"]) == {"a.bin", "model.py"}
    stamp = (first.path / "a.bin").stat().st_mtime_ns

    same = write_model_version(tmp_path, "m", {"model.py": SIMILAR_BACKEND_PY, "a.bin": b"one"}, metadata={"x": 2})
    assert not same.new and same.version == 1 and same.path == first.path  # metadata is not content

    second = write_model_version(tmp_path, "m", {"a.bin": b"two", "model.py": SIMILAR_BACKEND_PY}, metadata={})
    assert second.new and second.version == 2
    assert (first.path / "a.bin").read_bytes() == b"one" and (first.path / "a.bin").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]  # no temp folder left behind


def test_a_folder_taken_by_another_writer_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "m" / "4").mkdir(parents=True)
    (tmp_path / "m" / "4" / "keep.txt").write_text("someone else's")
    written = write_model_version(tmp_path, "m", {"a.bin": b"x"}, metadata={})
    assert written.version == 5 and (tmp_path / "m" / "4" / "keep.txt").read_text() == "someone else's"


def test_failed_writes_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        write_model_version(tmp_path, "m", {"model.onnx": tmp_path / "missing.onnx"}, metadata={})
    with pytest.raises(ValueError, match="invalid file name"):
        write_model_version(tmp_path, "m", {"../escape": b"x"}, metadata={})
    with pytest.raises(TypeError):
        write_model_version(tmp_path, "m", {"a": b"x"}, metadata={"not json": object()})
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def _tables(n: int = 6, rules: bool = True) -> FallbackTables:
    matrix = sp.csr_matrix(([0.5, 0.25], ([1, 1], [2, 3])), shape=(n + 1, n + 1), dtype=np.float32)
    return FallbackTables(popularity=np.arange(n + 1, dtype=np.float32), interactions=np.ones(n + 1, np.int64),
                          catalogue=np.ones(n + 1, bool), rules=matrix if rules else None)


def test_recommend_version_holds_backend_and_pickle_free_tables(tmp_path: Path) -> None:
    written = write_recommend_version(tmp_path, _tables(), metadata={"n_items": 6})
    names = sorted(p.name for p in written.path.iterdir())
    assert names == ["catalogue.npy", "interactions.npy", "lineage.json", "model.py", "placements.npz", "policy.npz",
                     "popularity.npy", "rules.npz", "rxrec_backend.py", "rxrec_pharmacy.py", "rxrec_search.py",
                     "rxrec_users.py", "search.npz"]  # no users.npz: these tables hold no stored user vectors
    assert (written.path / "model.py").read_bytes() == RECOMMEND_BACKEND_PY.read_bytes()
    assert (written.path / "rxrec_pharmacy.py").read_bytes() == PHARMACY_PY.read_bytes()
    assert (written.path / "rxrec_search.py").read_bytes() == SEARCH_PY.read_bytes()
    assert len(SearchIndex.load(written.path / "search.npz").words) == 0, "no catalogue: an empty index, same size"
    assert SafetyTables.load(written.path / "policy.npz").n_items == 6, "no catalogue: permissive tables, same size"
    with np.load(written.path / "rules.npz", allow_pickle=False) as z:
        loaded = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(7, 7))
    assert loaded[1, 2] == pytest.approx(0.5) and loaded[1, 3] == pytest.approx(0.25) and loaded.nnz == 2
    np.testing.assert_array_equal(np.load(written.path / "popularity.npy", allow_pickle=False), np.arange(7))
    # the same tables again (fresh bytes, same content) are recognised: no new folder
    assert not write_recommend_version(tmp_path, _tables(), metadata={}).new
    assert write_recommend_version(tmp_path, _tables(rules=False), metadata={}).version == 2


def test_a_version_scoring_in_process_carries_its_model_and_a_new_model_is_a_new_version(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes of gpt4rec version 3")
    repo = tmp_path / "repo"
    written = write_recommend_version(repo, _tables(), metadata={}, scorer=model)
    assert (written.path / "gpt4rec.onnx").read_bytes() == model.read_bytes()
    assert "gpt4rec.onnx" in json.loads((written.path / "lineage.json").read_text())["files"]
    assert not write_recommend_version(repo, _tables(), metadata={}, scorer=model).new
    model.write_bytes(b"onnx bytes of gpt4rec version 4")  # same tables, the champion changed: a new version
    assert write_recommend_version(repo, _tables(), metadata={}, scorer=model).version == 2
    with pytest.raises(FileNotFoundError, match="gpt4rec.onnx source not found"):
        write_recommend_version(repo, _tables(), metadata={}, scorer=tmp_path / "missing.onnx")


def test_stored_user_vectors_travel_into_the_version_and_must_score_its_items(tmp_path: Path) -> None:
    users = UserVectors.build(np.array([4, 2]), np.ones((2, 3), np.float32), np.ones((7, 3), np.float32))
    written = write_recommend_version(tmp_path, dataclasses.replace(_tables(), users=users), metadata={})
    assert UserVectors.load(written.path / "users.npz").user_ids.tolist() == [2, 4]
    assert (written.path / "rxrec_users.py").read_bytes() == USERS_PY.read_bytes()
    other = UserVectors.build(np.array([1]), np.ones((1, 3), np.float32), np.ones((9, 3), np.float32))
    with pytest.raises(ValueError, match="user vectors score 8 items, popularity 6"):
        dataclasses.replace(_tables(), users=other).check()


def test_the_champions_user_vectors_must_come_from_the_served_model(tmp_path: Path) -> None:
    from pipelines.repository.companions import champion_users

    assert champion_users(None, 6)[0] is None and "stored no user vectors" in champion_users(None, 6)[1]
    path = tmp_path / "users.npz"
    path.write_bytes(UserVectors.build(np.array([1]), np.ones((1, 3), np.float32), np.ones((9, 3), np.float32)).to_bytes())
    assert champion_users(path, 8)[1] == "1 users, dim 3"
    with pytest.raises(ValueError, match="scores 8 items but the served gpt4rec 6"):
        champion_users(path, 6)


def test_fallback_tables_must_agree_on_size() -> None:
    tables = _tables()
    bad = FallbackTables(tables.popularity, tables.interactions[:-1], tables.catalogue, tables.rules)
    with pytest.raises(ValueError, match="interactions has 6 rows"):
        bad.files()
    with pytest.raises(ValueError, match="rules matrix"):
        FallbackTables(tables.popularity, tables.interactions, tables.catalogue, sp.csr_matrix((3, 3))).files()


def test_similar_items_version_holds_model_backend_and_known(tmp_path: Path) -> None:
    known = np.array([False, True, True, False])
    written = write_similar_items_version(tmp_path, b"onnx-bytes", known, metadata={"embedding_method": "toy"})
    assert (written.path / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (written.path / "model.py").read_bytes() == SIMILAR_BACKEND_PY.read_bytes()
    assert (written.path / "rxrec_backend.py").read_bytes() == BACKEND_COMMON_PY.read_bytes()
    np.testing.assert_array_equal(np.load(written.path / "known.npy", allow_pickle=False), known)
    with pytest.raises(ValueError, match="1-D bool mask"):
        write_similar_items_version(tmp_path, b"x", np.ones((2, 2), bool), metadata={})


def test_fingerprint_depends_on_content_and_names_only() -> None:
    assert fingerprint({"a": b"1", "b": b"2"})[0] == fingerprint({"b": b"2", "a": b"1"})[0]
    assert fingerprint({"a": b"1"})[0] != fingerprint({"a": b"2"})[0] != fingerprint({"c": b"2"})[0]


def test_fallback_tables_from_pipeline_artifacts(tmp_path: Path) -> None:
    """popularity + rules + training interactions + catalogue, resized to the served n_items."""
    from pipelines.data.sequences import Sequences, save_sequences
    from pipelines.models.popularity import PopularityRecommender
    from pipelines.models.rules import AssociationRules, RulesSettings
    from pipelines.repository.companions import fallback_tables

    p = Paths(tmp_path)
    histories = [np.array([1, 2, 3, 4, 5]), np.array([1, 2, 3, 9]), np.array([2, 3, 6])]
    seqs = Sequences(np.arange(3), histories, [np.arange(len(h), dtype=float) for h in histories], n_items=9)
    save_sequences(seqs, p.features)
    PopularityRecommender(np.arange(10, dtype=np.float32)).save(p.models / "popularity")
    AssociationRules.from_histories(seqs.train(), 9, RulesSettings(min_support=2)).save(p.models / "rules")
    p.validated.mkdir(parents=True)
    pd.DataFrame({"item_id": [1, 2, 3, 4, 5, 6, 8]}).to_parquet(p.validated / "catalogue.parquet")

    tables = fallback_tables(p, n_items=8)  # gpt4rec knows 8 items: item 9 is cut off
    assert len(tables.popularity) == len(tables.interactions) == len(tables.catalogue) == 9
    assert tables.catalogue.tolist() == [False, True, True, True, True, True, True, False, True]
    # training histories drop the last two items of each user: [1, 2, 3], [1, 2], [2]
    assert tables.interactions.tolist() == [0, 2, 3, 1, 0, 0, 0, 0, 0]
    assert tables.rules.shape == (9, 9) and tables.rules[1, 2] > 0
    (p.models / "popularity" / "counts.npy").unlink()
    with pytest.raises(FileNotFoundError, match="train_popularity"):
        fallback_tables(p, n_items=8)


def test_policy_tables_come_from_the_catalogue_and_a_bad_interaction_row_is_named_by_its_line(tmp_path: Path) -> None:
    """deploy's recommend tables carry the policy; the pharmacy's own table is read, its bad line named."""
    from pipelines.core.config import PolicySettings
    from pipelines.models.popularity import PopularityRecommender
    from pipelines.pharmacy.tables import InteractionTableError
    from pipelines.repository.companions import fallback_tables

    p = Paths(tmp_path)
    from pipelines.data.sequences import Sequences, save_sequences

    save_sequences(Sequences(np.arange(1), [np.array([1, 2, 3])], [np.arange(3, dtype=float)], n_items=4), p.features)
    PopularityRecommender(np.arange(5, dtype=np.float32)).save(p.models / "popularity")
    p.validated.mkdir(parents=True)
    pd.DataFrame({"item_id": [1, 2, 3, 4], "composition": ["Ibuprofen 400mg", "Diclofenac 50mg", None, "Zinc 50mg"],
                  "rx_required": [False, False, True, False],
                  "restricted": pd.array([None, True, None, None], dtype="boolean")}).to_parquet(
        p.validated / "catalogue.parquet")
    (tmp_path / "own.csv").write_text("molecule_a,molecule_b,severity,source\nIbuprofen,Zinc,major,our formulary\n")
    tables = fallback_tables(p, n_items=4, policy=PolicySettings(interactions_table="own.csv"))
    assert tables.policy.rx_required.tolist() == [False, False, False, True, False]
    assert tables.policy.restricted.tolist() == [False, False, True, False, False]
    assert sorted(tables.policy.molecule_names.tolist()) == ["diclofenac", "ibuprofen", "zinc"]
    assert len(tables.policy.interacting_pairs) == 1, "the pharmacy's own table replaces the shipped one"
    (tmp_path / "own.csv").write_text("molecule_a,molecule_b,severity,source\nIbuprofen,Zinc,major,x\nIbuprofen,Zinc,high,x\n")
    with pytest.raises(InteractionTableError, match=r"own.csv:3: severity 'high'"):
        fallback_tables(p, n_items=4, policy=PolicySettings(interactions_table="own.csv"))


def test_load_order_puts_dependencies_first(tmp_path: Path) -> None:
    for name in ("zeta", "recommend", "similar_items", "gpt4rec", "alpha"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text("")
    (tmp_path / "no_versions").mkdir()
    (tmp_path / "no_versions" / "config.pbtxt").write_text("")
    assert model_load_order(tmp_path) == ["gpt4rec", "similar_items", "recommend", "alpha", "zeta"]
    assert model_load_order(tmp_path / "missing") == []
