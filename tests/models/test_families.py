"""Adding a model family is one new module plus its params.yaml section, and nothing else.

The test copies the project to a temporary folder, adds an item-KNN family there (the module below and an
`itemknn:` section appended to params.yaml) and, in a fresh interpreter over that copy, checks that
everything a family needs follows from it: the registry finds it by name, its section is typed (a bad
value is refused naming the key and the bound), it fits and scores, its stage is in the rendered dvc.yaml
(where the Airflow DAG's tasks and run form come from) and in the stage table, and it gets a leaderboard row.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.core.config import PROJECT_ROOT

ITEMKNN_MODULE = '''\
"""Item-KNN: score the items most similar to what a user saw last (cosine over co-occurrence in histories).

Two items are similar when the same training histories hold them; the count is shrunk towards zero for
rare pairs. Each item keeps its `neighbours` most similar items, and a history scores every item by the
summed similarity to its last `recent_items` items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from pipelines.core.config import ParamsSection
from pipelines.data.sequences import Sequences
from pipelines.models.base import Family, FitContext

SIMILARITY_FILE = "similarity.npz"


class ItemKNNSettings(ParamsSection):
    """The `itemknn:` section of params.yaml."""

    neighbours: int = Field(20, ge=1)
    shrink: float = Field(10.0, ge=0)
    recent_items: int = Field(3, ge=1)


class ItemKNN(Family):
    """An item-item similarity table, fired by the last items of a history."""

    family = "itemknn"
    settings_type = ItemKNNSettings

    def __init__(self, similarity: sp.csr_matrix, recent_items: int) -> None:
        self.similarity, self.recent_items = similarity.tocsr(), recent_items

    @classmethod
    def fit(cls, seqs: Sequences, s: ItemKNNSettings, ctx: FitContext) -> tuple[ItemKNN, dict[str, Any]]:
        histories = [h for h in seqs.train() if len(h)]
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        held = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(histories))),
                             shape=(len(histories), seqs.n_items + 1))
        held.data[:] = 1.0  # a user either holds an item or not
        together = (held.T @ held).toarray()
        norms = np.sqrt(np.diag(together))
        similarity = together / (np.outer(norms, norms) + s.shrink + 1e-9)
        np.fill_diagonal(similarity, 0.0)
        keep = min(s.neighbours, similarity.shape[1] - 1)
        weakest = np.argpartition(-similarity, keep, axis=1)[:, keep:]
        np.put_along_axis(similarity, weakest, 0.0, axis=1)
        table = sp.csr_matrix(similarity.astype(np.float32))
        return cls(table, s.recent_items), {"n_pairs": int(table.nnz)}

    def score(self, histories: list[np.ndarray], kinds: list[np.ndarray] | None = None) -> np.ndarray:
        scores = np.zeros((len(histories), self.similarity.shape[0]), np.float32)
        for row, history in enumerate(histories):
            recent = np.asarray(history[-self.recent_items:])
            if len(recent := recent[recent > 0]):
                scores[row] = np.asarray(self.similarity[recent].sum(axis=0)).ravel()
        return scores

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        sp.save_npz(out_dir / SIMILARITY_FILE, self.similarity)
        (out_dir / "meta.json").write_text(json.dumps({"model": self.family, "recent_items": self.recent_items}))

    @classmethod
    def load(cls, in_dir: Path) -> ItemKNN:
        meta = json.loads((in_dir / "meta.json").read_text())
        return cls(sp.load_npz(in_dir / SIMILARITY_FILE), meta["recent_items"])
'''

ITEMKNN_SECTION = """
itemknn:                    # item-item cosine over co-occurrence in training histories
  neighbours: 20            # similar items kept per item
  shrink: 10.0              # damps the similarity of rarely co-occurring pairs
  recent_items: 3           # the last N items of a history fire their neighbours
"""

# Runs in the copy, in a fresh interpreter (the registry and the settings are read once per process).
CHECKS = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import numpy as np
    import yaml

    import pipelines
    from pipelines.core.config import SettingsError, load_settings
    from pipelines.data.sequences import Sequences
    from pipelines.evaluate.protocol import evaluate
    from pipelines.models.base import FitContext
    from pipelines.models.families import family, family_names, fit_family, load_recommenders
    from pipelines.stages import STAGES
    from pipelines.stages.declare import render_dvc_yaml

    out = {"package": pipelines.__file__, "families": list(family_names()),
           "class": family("itemknn").__name__, "in_stages": "train_itemknn" in STAGES}
    settings = load_settings()
    out["settings_type"] = type(settings.itemknn).__name__
    out["default_neighbours"] = settings.itemknn.neighbours
    refused = {}
    for override in ("itemknn.neighbours=0", "itemknn.shrink=-1", "itemknn.nope=1", "itemknn.recent_items=abc"):
        try:
            load_settings(overrides=[override])
        except SettingsError as exc:
            refused[override] = str(exc)
    out["refused"] = refused

    # A world where the next item is always the following one: item-KNN learns it.
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 40, 300)
    world = Sequences(user_ids=np.arange(1, 301), items=[((s + np.arange(8)) % 40) + 1 for s in starts],
                      times=[np.arange(8, dtype=np.float64) + u * 100 for u in range(300)], n_items=40)
    model, info = fit_family("itemknn", world, load_settings(), FitContext(seed=0, progress=False))
    out["hr_at_10"] = evaluate(model, world, split="test", k=10)["hr_at_10"]
    model.save(Path(sys.argv[1]) / "itemknn")
    again = load_recommenders(Path(sys.argv[1]))["itemknn"]
    histories = [np.array([3, 4, 5]), np.array([7])]
    out["reloaded_scores_equal"] = bool(np.allclose(again.score(histories), model.score(histories)))

    out["dvc"] = yaml.safe_load(render_dvc_yaml())["stages"]

    from benchmarks.quality import FAMILIES, run_quality
    out["quality_families"] = list(FAMILIES)
    tiny = ["data.n_products=120", "data.n_users=400", "itemknn.neighbours=10"]
    report = run_quality("synthetic", ("popularity", "itemknn"), tiny, log_mlflow=False, out_dir=Path(sys.argv[1]))
    out["leaderboard"] = json.loads(report.read_text())["models"]
    print(json.dumps(out))
''')


def _project_copy_with_a_new_family(root: Path) -> Path:
    """The project's code and params, plus `pipelines/models/itemknn.py` and its params.yaml section."""
    for package in ("pipelines", "benchmarks"):
        shutil.copytree(PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", "pyproject.toml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    (root / "pipelines" / "models" / "itemknn.py").write_text(ITEMKNN_MODULE)
    with (root / "params.yaml").open("a") as params:
        params.write(ITEMKNN_SECTION)
    return root


def test_a_new_family_is_one_module_plus_its_params_section(tmp_path):
    root = _project_copy_with_a_new_family(tmp_path / "project")
    env = {key: value for key, value in os.environ.items()
           if key not in ("RXREC_WORKDIR", "RXREC_PARAMS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run([sys.executable, "-c", CHECKS, str(tmp_path)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["package"].startswith(str(root))  # the copy, not the installed tree

    # Found by name, last on the leaderboard (the order of params.yaml), with a train stage.
    assert out["families"][-1] == "itemknn" and out["families"][:5] == ["popularity", "mf", "rules", "ncf", "gpt4rec"]
    assert out["class"] == "ItemKNN" and out["in_stages"]

    # Typed by its own module: defaults from params.yaml, bad values refused naming the key and the bound.
    assert out["settings_type"] == "ItemKNNSettings" and out["default_neighbours"] == 20
    refused = out["refused"]
    assert set(refused) == {"itemknn.neighbours=0", "itemknn.shrink=-1", "itemknn.nope=1", "itemknn.recent_items=abc"}
    assert "itemknn.neighbours must be >= 1, got 0" in refused["itemknn.neighbours=0"]
    assert "itemknn.shrink must be >= 0, got -1" in refused["itemknn.shrink=-1"]
    assert "itemknn.nope is not a setting; the keys of itemknn are: neighbours, recent_items, shrink" in \
        refused["itemknn.nope=1"]
    assert "itemknn.recent_items must be an integer" in refused["itemknn.recent_items=abc"]

    # It learns, and what it saves loads back scoring the same.
    assert out["hr_at_10"] > 0.9 and out["reloaded_scores_equal"]

    # Its dvc stage (and so the DAG task and the run form's family list) follows from the declarations.
    stages = out["dvc"]
    assert stages["train_itemknn"] == {
        "cmd": "rxrec stage train_itemknn",
        "deps": ["data/features", "pipelines/models/base.py", "pipelines/models/itemknn.py", "pipelines/stages/train.py"],
        "params": ["itemknn", "data", "evaluate"], "outs": ["artifacts/models/itemknn"]}
    assert "artifacts/models/itemknn" in stages["evaluate"]["deps"]
    assert "itemknn" in stages["register"]["params"]

    # Its leaderboard row, on the tiny generated world, beside the popularity baseline.
    assert out["quality_families"][-1] == "itemknn"
    row = out["leaderboard"]["itemknn"]
    assert list(out["leaderboard"]) == ["popularity", "itemknn"]
    assert all(0 <= row[key] <= 1 for key in ("hr_at_10", "ndcg_at_10", "mrr", "coverage_at_10"))
    assert row["hr_at_10"] > 0 and row["runs"][0]["train_info"]["n_pairs"] > 0


def test_a_refit_trains_the_chosen_epochs_on_train_plus_validation_and_keeps_the_selection_curve(cyclic_world,
                                                                                                  monkeypatch):
    from types import SimpleNamespace

    from pipelines.models import base
    from pipelines.models.base import FitContext
    from pipelines.models.families import fit_family
    from pipelines.models.gru4rec import GRU4RecSettings

    seen: list[int] = []
    real_examples = base.training_examples
    monkeypatch.setattr("pipelines.models.gru4rec.training_examples",
                        lambda histories, max_len: seen.append(sum(map(len, histories))) or real_examples(histories,
                                                                                                        max_len))
    section = GRU4RecSettings(dim=16, max_len=10, dropout=0.0, epochs=4, batch_size=64, lr=0.01, refit=True)
    model, info = fit_family("gru4rec", cyclic_world, SimpleNamespace(gru4rec=section), FitContext(seed=0, progress=False))
    assert info["refit"]["epochs"] == info["best_epoch"] == len(info["refit"]["losses"])
    assert all("valid_ndcg_at_10" in row for row in info["history"])  # the selection run's curve, not the refit's
    evaluated = sum(1 for s in cyclic_world.items if len(s) >= 3)
    assert seen == [sum(map(len, cyclic_world.train())), sum(map(len, cyclic_world.train())) + evaluated]
    assert not model.training


def test_a_refit_epoch_loop_never_reads_the_validation_split(cyclic_world, monkeypatch):
    from pipelines.models.base import FitContext
    from pipelines.models.gru4rec import GRU4Rec, GRU4RecSettings

    monkeypatch.setattr("pipelines.models.base.evaluate", lambda *a, **k: pytest.fail("validation was read"))
    section = GRU4RecSettings(dim=16, max_len=10, dropout=0.0, epochs=3, batch_size=64, lr=0.01, patience=1)
    _, info = GRU4Rec.fit(cyclic_world.with_validation_in_training(), section,
                          FitContext(seed=0, progress=False, validate=False))
    assert info["epochs_run"] == info["best_epoch"] == 3 and info["stopped_by"] == "epochs"


def test_the_time_budget_cuts_an_epoch_and_holds_the_refit_too(cyclic_world, monkeypatch):
    """On a fake clock (10 s a reading, one reading a batch) a 300 s budget cuts the first epoch of 38 batches: the
    cut epoch is validated and kept, so one epoch over a large world cannot overrun the budget; a refitting family
    stops sooner, keeping as much time again for its refit."""
    from types import SimpleNamespace

    from pipelines.models.base import FitContext
    from pipelines.models.gru4rec import GRU4Rec, GRU4RecSettings

    def fit(refit: bool) -> dict:
        ticks = iter(range(0, 10**6, 10))
        monkeypatch.setattr("pipelines.models.base.time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
        section = GRU4RecSettings(dim=16, max_len=10, dropout=0.0, epochs=30, batch_size=8, lr=0.01, patience=30,
                                  time_budget_s=300, refit=refit)
        return GRU4Rec.fit(cyclic_world, section, FitContext(seed=0, progress=False))[1]

    plain, refitting = fit(False), fit(True)
    for info in (plain, refitting):
        assert info["stopped_by"] == "time_budget" and info["epochs_run"] == info["best_epoch"] == 1
        assert 0 < info["best_epoch_fraction"] == info["history"][0]["fraction"] < 1
        assert info["history"][0]["valid_ndcg_at_10"] >= 0
    assert refitting["best_epoch_fraction"] < 0.75 * plain["best_epoch_fraction"]


def test_a_refit_trains_the_share_of_the_last_epoch_that_was_selected(cyclic_world):
    from pipelines.models.base import FitContext
    from pipelines.models.families import refit_family
    from pipelines.models.gru4rec import GRU4RecSettings

    section = GRU4RecSettings(dim=16, max_len=10, dropout=0.0, epochs=30, batch_size=8, lr=0.01, refit=True)
    _, whole = refit_family("gru4rec", cyclic_world, section, FitContext(seed=0, progress=False), 2)
    _, cut = refit_family("gru4rec", cyclic_world, section, FitContext(seed=0, progress=False), 2, 0.4)
    assert whole["epochs"] == cut["epochs"] == 2 and whole["last_epoch_fraction"] == 1.0
    assert 0.4 <= cut["last_epoch_fraction"] < 0.45  # whole batches: ceil(0.4 x 38) of 38


def test_the_time_budget_cuts_an_ncf_epoch(cyclic_world, monkeypatch):
    """NCF has no validation loop, but the same budget holds it: on a fake clock (10 s a batch) a 300 s budget stops
    the first epoch part way and says so; without a budget every epoch runs."""
    from types import SimpleNamespace

    from pipelines.models.base import FitContext
    from pipelines.models.ncf import NCFRecommender, NCFSettings

    def fit(budget: float) -> dict:
        ticks = iter(range(0, 10**6, 10))
        monkeypatch.setattr("pipelines.models.ncf.time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
        section = NCFSettings(dim=8, hidden=8, max_len=10, epochs=3, batch_size=8, time_budget_s=budget)
        return NCFRecommender.fit(cyclic_world, section, FitContext(seed=0, progress=False))[1]

    cut, whole = fit(300), fit(0)
    assert cut["stopped_by"] == "time_budget" and len(cut["losses"]) == 1 and 0 < cut["epochs_trained"] < 1
    assert whole["stopped_by"] == "epochs" and len(whole["losses"]) == 3 and whole["epochs_trained"] == 3
