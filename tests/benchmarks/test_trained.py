"""The benchmarks' trained-model cache: what makes a model different, and what does not."""

from __future__ import annotations

from benchmarks.trained import _key, parse_catalogues, training_only


def test_serving_overrides_neither_train_nor_change_the_cached_model():
    overrides = ["gpt4rec.dropout=0.2", "serve.recommend_instances=2", " serve.max_batch_size=8", "server.x=1"]
    assert training_only(overrides) == ["gpt4rec.dropout=0.2", "server.x=1"]
    catalogue = parse_catalogues("synthetic:300")[0]
    assert _key(catalogue, training_only(overrides)) == _key(catalogue, training_only(overrides[:1] + overrides[3:]))
    assert _key(catalogue, training_only(overrides)) != _key(catalogue, training_only(overrides[1:]))


def test_the_cache_key_follows_the_code_and_the_training_params(tmp_path, monkeypatch):
    """A cached model is reused only while the code of its stages and params.yaml's training sections are the
    same; serving settings do not count."""
    monkeypatch.setattr("benchmarks.trained.PROJECT_ROOT", tmp_path)
    module = tmp_path / "pipelines" / "graph" / "walks.py"
    module.parent.mkdir(parents=True)
    module.write_text("WALKS = 10\n")
    params = tmp_path / "params.yaml"
    params.write_text("gpt4rec:\n  dim: 64\nserve:\n  recommend_instances: 3\n")
    catalogue = parse_catalogues("synthetic:300")[0]
    first = _key(catalogue, [])
    params.write_text("gpt4rec:\n  dim: 64\nserve:\n  recommend_instances: 5\n")
    assert _key(catalogue, []) == first
    params.write_text("gpt4rec:\n  dim: 32\nserve:\n  recommend_instances: 5\n")
    second = _key(catalogue, [])
    assert second != first
    module.write_text("WALKS = 20\n")
    assert _key(catalogue, []) != second
