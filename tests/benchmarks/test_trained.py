"""The benchmarks' trained-model cache: what makes a model different, and what does not."""

from __future__ import annotations

from benchmarks.trained import _key, parse_catalogues, training_only


def test_serving_overrides_neither_train_nor_change_the_cached_model():
    overrides = ["gpt4rec.dropout=0.2", "serve.recommend_instances=2", " serve.max_batch_size=8", "server.x=1"]
    assert training_only(overrides) == ["gpt4rec.dropout=0.2", "server.x=1"]
    catalogue = parse_catalogues("synthetic:300")[0]
    assert _key(catalogue, training_only(overrides)) == _key(catalogue, training_only(overrides[:1] + overrides[3:]))
    assert _key(catalogue, training_only(overrides)) != _key(catalogue, training_only(overrides[1:]))
