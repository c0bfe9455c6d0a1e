"""The search placement's retrieval (pipelines/pharmacy/search.py) on a generated catalogue."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest

from pipelines.core.config import DataSettings
from pipelines.data.generate import generate_world
from pipelines.pharmacy.catalogue import build_search, search_texts
from pipelines.pharmacy.search import (
    SearchIndex,
    build_search_index,
    deletions,
    edit_distance,
    max_edits,
    query_problem,
    words,
)


@pytest.fixture(scope="module")
def catalogue():
    return generate_world(DataSettings(seed=3, n_products=1500, n_users=50), progress=False).catalogue


@pytest.fixture(scope="module")
def index(catalogue) -> SearchIndex:
    return build_search(catalogue, int(catalogue["item_id"].max()))


def typo(word: str, rng: random.Random) -> str:
    """One edit a customer makes: a letter dropped, added, changed, or two neighbours swapped."""
    i, letters = rng.randrange(len(word)), "abcdefghijklmnopqrstuvwxyz"
    kind = rng.choice(["drop", "add", "change", "swap"])
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "add":
        return word[:i] + rng.choice(letters) + word[i:]
    if kind == "swap" and i < len(word) - 1 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + rng.choice(letters.replace(word[i], "")) + word[i + 1:]


def test_words_split_digits_from_units_and_keep_decimals() -> None:
    assert words("Metformin 500mg + Glimepiride 0.5MG, Tablet") == ["metformin", "500", "mg", "glimepiride", "0.5",
                                                                    "mg", "tablet"]
    assert words("fever|headache") == ["fever", "headache"]
    assert words("  ...  ") == []


def test_edits_allowed_grow_with_length_and_numbers_must_match() -> None:
    assert [max_edits(w) for w in ("mg", "moze", "diaco", "diacor", "500", "0.5")] == [0, 1, 1, 2, 0, 0]
    assert edit_distance("metfromin", "metformin") == 1  # a swap of neighbours is one edit
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert deletions("abc", 1) == {"abc", "bc", "ac", "ab"}


def test_a_product_is_found_by_its_name_exactly(index, catalogue) -> None:
    sample = catalogue.sample(300, random_state=1)
    hits = 0
    for item, name in zip(sample["item_id"], sample["name"], strict=True):
        ids, scores = index.search(name, 5)
        hits += int(item) in ids.tolist()
        assert np.all(np.diff(scores) <= 0), "best first"
    assert hits / len(sample) >= 0.99


def test_one_typo_in_a_brand_still_finds_the_product(index, catalogue) -> None:
    """The customer types the brand with one mistake and the strength: the product (or its twin of the same
    brand and strength in another form) is in the top 5 for at least 90% of queries."""
    rng = random.Random(7)
    sample = catalogue.sample(400, random_state=2)
    names = catalogue.set_index("item_id")["name"]
    hits = 0
    for item, name in zip(sample["item_id"], sample["name"], strict=True):
        brand, *rest = name.split()
        strength = rest[:-1]  # "500mg" of "Moze 500mg Capsule"; [] for "Xazecu Device"
        query = " ".join([typo(brand.lower(), rng), *strength])
        ids, _ = index.search(query, 5)
        hits += any(i == item or names[i].split()[:-1] == [brand, *strength] for i in ids.tolist())
    rate = hits / len(sample)
    print(f"one typo in the brand: the product in the top 5 for {rate:.3f} of {len(sample)} queries")
    assert rate >= 0.9


def test_a_misspelt_molecule_finds_its_products_and_the_strength_must_match(index, catalogue) -> None:
    composition = catalogue.set_index("item_id")["composition"].fillna("")
    ids, _ = index.search("metfromin 1000", 10)
    assert len(ids) == 10
    assert all("metformin 1000mg" in composition[i].lower() for i in ids.tolist()), composition[ids].tolist()
    ids, _ = index.search("omeprazol", 10)
    assert len(ids) and all("omeprazole" in composition[i].lower() for i in ids.tolist())


def test_nothing_matching_returns_nothing_and_a_repeated_word_counts_once(index) -> None:
    assert len(index.search("xqzvk", 10)[0]) == 0
    once, twice = index.search("gel", 20), index.search("gel gel GEL", 20)
    np.testing.assert_array_equal(once[0], twice[0])
    np.testing.assert_allclose(once[1], twice[1])


def test_the_index_round_trips_and_a_broken_one_is_named(index, tmp_path) -> None:
    path = tmp_path / "search.npz"
    path.write_bytes(index.to_bytes())
    loaded = SearchIndex.load(path)
    np.testing.assert_array_equal(loaded.search("paracetamol", 10)[0], index.search("paracetamol", 10)[0])
    arrays = {name: getattr(index, name) for name in index.__dataclass_fields__}
    arrays["word_items"] = arrays["word_items"][:-1]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="word lists do not match"):
        SearchIndex.load(path)
    with pytest.raises(ValueError, match="cover 2 items, expected 3"):
        build_search_index(["", "a", "b"], 3)
    assert len(SearchIndex.empty(5).search("anything", 10)[0]) == 0


def test_search_texts_hold_what_customers_type(catalogue) -> None:
    n = int(catalogue["item_id"].max())
    texts = search_texts(catalogue, n + 2)
    row = catalogue.iloc[0]
    assert row["name"] in texts[int(row["item_id"])]
    assert texts[0] == "" and texts[n + 1] == "" and len(texts) == n + 3
    with_uses = catalogue.dropna(subset=["uses"]).iloc[0]
    assert with_uses["uses"].split("|")[0] in texts[int(with_uses["item_id"])]


@pytest.mark.parametrize(("raw", "problem"), [
    (b"", "is empty"), (b"  -- ", "is empty"), (b"x" * 10_240, "is 10,240 bytes; a query holds at most 256"),
    (b"\xff\xfe", "is not UTF-8"),
])
def test_a_bad_query_says_what_is_wrong(raw, problem) -> None:
    text, said = query_problem(raw)
    assert text == "" and problem in said


def test_a_good_query_comes_back_as_text() -> None:
    assert query_problem(b"metformin 500") == ("metformin 500", None)
    assert query_problem("crème".encode()) == ("crème", None)
