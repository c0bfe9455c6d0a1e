"""The search placement's retrieval: a free-text query finds products by name, composition and use, typos too.

numpy and the standard library only: the repository writer copies this file as rxrec_search.py beside the
`recommend` backend with its index, search.npz (built at deploy from the validated catalogue by
`build_search_index`, this same file), so the server and the tests run one implementation.

Two levels, as a search engine's spelling tolerance works:
  words    a TF-IDF over the catalogue's words (sublinear term frequency, smoothed inverse document
           frequency, each product's vector of unit length): what makes "diclofenac gel" rank the gels of
           diclofenac above every other diclofenac or gel;
  spelling each query word is matched to the catalogue's words within an edit distance that grows with
           its length, as Elasticsearch's `fuzziness: AUTO` (0 edits up to 2 letters, 1 up to 5, 2 beyond;
           an edit inserts, deletes or changes a letter or swaps two neighbours). A word the catalogue
           holds matches itself only; any other matches its closest words, weighted by similarity
           1 - edits / length. Candidates come from a symmetric-delete table (SymSpell: every word's
           spellings with up to its allowed letters deleted, looked up by the query word's own), so the
           cost is that of the query word's deletions, not of the vocabulary. "metfromin" finds
           "metformin", "mzoe" finds "moze".
A product's score is the sum over query words of its best-matching word's weight (similarity x query
weight x the word's weight in the product), so one query word never counts twice. Digits and units are
split ("500mg" -> "500 mg"), so "500" and "500 mg" find "500mg".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

try:  # in the server: the copy of served.py in the same version folder
    from rxrec_pharmacy import NpzTables
except ImportError:  # in the package
    from pipelines.pharmacy.served import NpzTables

SEARCH_FILE = "search.npz"
MAX_QUERY_BYTES = 256  # a longer query is refused (config parameter max_query_bytes overrides)
MAX_SPELLINGS = 3  # catalogue words one misspelt query word may stand for
MAX_QUERY_WORDS = 16  # words of a query that are read (a long pasted text is cut, not refused)
_NOT_WORD = re.compile(r"[^0-9a-z.]+")
_DIGIT_LETTER = re.compile(r"(?<=[0-9])(?=[a-z])|(?<=[a-z])(?=[0-9])")


def words(text: str) -> list[str]:
    """Lower-case words: anything but letters, digits and '.' (0.5) splits, and so does a digit-letter edge."""
    return _DIGIT_LETTER.sub(" ", _NOT_WORD.sub(" ", text.lower())).replace(". ", " ").strip(" .").split()


def max_edits(word: str) -> int:
    """Edits a word of this length may be off by (Elasticsearch fuzziness AUTO); numbers must be exact."""
    if word.replace(".", "").isdigit():
        return 0
    return 0 if len(word) <= 2 else 1 if len(word) <= 5 else 2


def deletions(word: str, edits: int) -> set[str]:
    """The word with up to `edits` letters deleted (itself included)."""
    found, frontier = {word}, {word}
    for _ in range(edits):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))} - found
        found |= frontier
    return found


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    previous, current = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        before, previous, current = previous, current, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
    return current[len(b)]


@dataclass(frozen=True)
class SearchIndex(NpzTables):
    """The catalogue's words with their product lists (TF-IDF weights), and their deletions (for spelling)."""

    KIND = "search index"

    words: np.ndarray  # str [W], sorted
    idf: np.ndarray  # float32 [W]
    word_indptr: np.ndarray  # int64 [W + 1]: the products holding each word, list after list
    word_items: np.ndarray  # int64 item ids
    word_weights: np.ndarray  # float32: the word's weight in that product's unit vector
    deletes: np.ndarray  # str [D], sorted: every word with up to max_edits(word) letters deleted
    delete_indptr: np.ndarray  # int64 [D + 1]: the words each deletion comes from, list after list
    delete_words: np.ndarray  # int64 word rows
    n_items: np.ndarray  # int64 scalar: ids are 1..n_items

    def check(self) -> None:
        n_words = len(self.words)
        if len(self.idf) != n_words or len(self.word_indptr) != n_words + 1:
            raise ValueError(f"search index: the word tables do not all cover its {n_words} words")
        if len(self.word_items) != len(self.word_weights) or int(self.word_indptr[-1]) != len(self.word_items):
            raise ValueError("search index: the word lists do not match their items and weights")
        if len(self.delete_indptr) != len(self.deletes) + 1 or int(self.delete_indptr[-1]) != len(self.delete_words):
            raise ValueError("search index: the deletion lists do not match their words")
        if len(self.word_items) and (int(self.word_items.min()) < 1 or int(self.word_items.max()) > int(self.n_items)):
            raise ValueError(f"search index: an item id lies outside 1..{int(self.n_items)}")

    def spellings(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """(word rows, similarity): the word itself if the catalogue has it, else its closest words within
        max_edits(word) edits."""
        pos = int(np.searchsorted(self.words, word))
        if pos < len(self.words) and self.words[pos] == word:
            return np.array([pos], np.int64), np.ones(1)
        edits = max_edits(word)
        if edits == 0 or len(self.deletes) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        keys = np.array(sorted(deletions(word, edits)), dtype=str)
        at = np.minimum(np.searchsorted(self.deletes, keys), len(self.deletes) - 1)
        at = at[self.deletes[at] == keys]
        if len(at) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        rows = np.unique(np.concatenate([self.delete_words[self.delete_indptr[d]:self.delete_indptr[d + 1]]
                                         for d in at]))
        found = []
        for row in rows.tolist():
            other = str(self.words[row])
            distance = edit_distance(word, other)
            if distance <= min(edits, max_edits(other)):
                found.append((1.0 - distance / max(len(word), len(other)), row))
        found = sorted(found, key=lambda x: (-x[0], x[1]))[:MAX_SPELLINGS]
        return np.array([r for _, r in found], np.int64), np.array([s for s, _ in found])

    def search(self, query: str, limit: int, min_relative: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, scores), best first: at most `limit` products scoring at least `min_relative` of the best
        one (a product matching one word of three does not trail a full match)."""
        matched = [self.spellings(w) for w in dict.fromkeys(words(query)[:MAX_QUERY_WORDS])]
        matched = [(rows, sim) for rows, sim in matched if len(rows)]
        if not matched:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        query_weight = np.array([float(self.idf[rows[0]]) for rows, _ in matched])
        query_weight /= np.linalg.norm(query_weight)
        scores = np.zeros(int(self.n_items) + 1)
        for (rows, sim), weight in zip(matched, query_weight, strict=True):
            best = np.zeros_like(scores)  # per product, its best spelling of this query word
            for row, s in zip(rows.tolist(), sim.tolist(), strict=True):
                lo, hi = self.word_indptr[row], self.word_indptr[row + 1]
                items = self.word_items[lo:hi]
                best[items] = np.maximum(best[items], s * self.word_weights[lo:hi])
            scores += weight * best
        found = np.flatnonzero(scores)
        found = found[scores[found] >= min_relative * scores[found].max()]
        order = np.lexsort((found, -scores[found]))[:limit]
        return found[order], scores[found[order]].astype(np.float32)

    @classmethod
    def empty(cls, n_items: int) -> SearchIndex:
        """No catalogue: nothing to find (the search placement then answers from its other sources)."""
        none = np.zeros(0, np.int64)
        return cls(np.zeros(0, "<U1"), np.zeros(0, np.float32), np.zeros(1, np.int64), none, np.zeros(0, np.float32),
                   np.zeros(0, "<U1"), np.zeros(1, np.int64), none, np.array(n_items, np.int64))


def build_search_index(texts: Sequence[str], n_items: int) -> SearchIndex:
    """The index over item ids 1..n_items; texts[i] is item i's searchable text ("" for none; texts[0] unused)."""
    if len(texts) != n_items + 1:
        raise ValueError(f"search texts cover {len(texts) - 1} items, expected {n_items}")
    counts = {item: Counter(words(text)) for item, text in enumerate(texts) if item and text}
    counts = {item: c for item, c in counts.items() if c}
    df = Counter(w for c in counts.values() for w in c)
    vocabulary = sorted(df)
    row_of = {w: i for i, w in enumerate(vocabulary)}
    idf = np.array([math.log((1 + len(counts)) / (1 + df[w])) + 1.0 for w in vocabulary])
    postings: list[list[tuple[int, float]]] = [[] for _ in vocabulary]
    for item, c in counts.items():
        rows = [row_of[w] for w in c]
        values = (1.0 + np.log(np.array(list(c.values()), dtype=np.float64))) * idf[rows]
        values /= np.linalg.norm(values)
        for row, value in zip(rows, values.tolist(), strict=True):
            postings[row].append((item, value))
    delete_lists: dict[str, list[int]] = {}
    for row, word in enumerate(vocabulary):
        for deleted in deletions(word, max_edits(word)):
            delete_lists.setdefault(deleted, []).append(row)
    deletes = sorted(delete_lists)
    flat = [pair for p in postings for pair in p]
    return SearchIndex(
        words=np.array(vocabulary, dtype=str) if vocabulary else np.zeros(0, "<U1"),
        idf=idf.astype(np.float32), word_indptr=_indptr([len(p) for p in postings]),
        word_items=np.array([i for i, _ in flat], dtype=np.int64),
        word_weights=np.array([w for _, w in flat], dtype=np.float32),
        deletes=np.array(deletes, dtype=str) if deletes else np.zeros(0, "<U1"),
        delete_indptr=_indptr([len(delete_lists[d]) for d in deletes]),
        delete_words=np.array([r for d in deletes for r in delete_lists[d]], dtype=np.int64),
        n_items=np.array(n_items, np.int64))


def _indptr(lengths: list[int]) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(np.asarray(lengths, dtype=np.int64)))).astype(np.int64)


def query_problem(raw: object, max_bytes: int = MAX_QUERY_BYTES) -> tuple[str, str | None]:
    """(query text, problem): a query must be UTF-8, hold a letter or digit, and fit in max_bytes."""
    data = raw if isinstance(raw, bytes) else str(raw).encode()
    if len(data) > max_bytes:
        return "", f"is {len(data):,} bytes; a query holds at most {max_bytes:,}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "", f"is not UTF-8 ({exc.reason} at byte {exc.start})"
    if not words(text):
        return "", "is empty: a search needs a word to look for (letters or digits)"
    return text, None
