import numpy as np
import pandas as pd
import torch

from pipelines.data.item_features import ItemFeatures, build_item_features
from pipelines.models.gpt4rec import GPT4Rec, GPT4RecConfig


def _catalogue():
    return pd.DataFrame({
        "item_id": [1, 2, 3],
        "manufacturer": ["Zenith Pharma Ltd", "zenith pharma", None],
        "composition": ["Paracetamol 500mg + Caffeine 30mg", "paracetamol 650mg", None],
        "therapeutic_class": ["ANALGESIC", "Analgesic", None],
        "uses": ["fever|headache", None, None],
        "form": ["Tablet", "tablet", None],
        "tags": [None, None, None],
    })


def test_spelling_variants_share_tokens_and_missing_meta_is_empty(tmp_path):
    f = build_item_features(_catalogue(), n_items=3)
    row1, row2 = set(f.tokens[1]) - {0}, set(f.tokens[2]) - {0}
    # same manufacturer, molecule (paracetamol), class and form despite case/suffix/strength variants
    assert len(row1 & row2) == 4
    assert "composition=caffeine" in f.vocab and "uses=headache" in f.vocab
    assert not f.tokens[3].any() and not f.tokens[0].any()
    f.save(tmp_path)
    assert np.array_equal(ItemFeatures.load(tmp_path).tokens, f.tokens)


def test_gpt4rec_reads_meta_tokens_for_items_and_outputs():
    f = build_item_features(_catalogue(), n_items=3)
    model = GPT4Rec(GPT4RecConfig(n_items=3, dim=8, layers=1, heads=2, max_len=4, dropout=0.0,
                                  meta_vocab=f.vocab_size, meta_width=f.tokens.shape[1])).eval()
    model.set_item_tokens(f.tokens)
    with torch.no_grad():
        vectors = model.item_vectors()
        assert torch.equal(vectors[3], model.item_emb.weight[3])  # no meta: the id embedding alone
        assert not torch.equal(vectors[1], model.item_emb.weight[1])
        assert model(torch.tensor([[1, 2]])).shape == (1, 4)
