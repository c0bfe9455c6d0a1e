"""Catalogue text normalisation: one spelling per value, whoever reads the catalogue.

1mg-like meta-info is sparse and inconsistent: case ("ANALGESIC"), unicode look-alikes (full-width
letters, non-breaking spaces, "µg"), company suffixes ("Ltd", "Pvt. Ltd.", "Limited"), strengths
inside compositions ("Paracetamol 500mg + Caffeine 30 mg"), stray punctuation and placeholders
("N/A"). GPT4Rec's meta tokens (data/item_features.py), Meta-Prod2Vec's fields and the text that
TF-IDF and the text encoder read (embed/meta.py) all go through this module, so one product
yields the same values, split the same way, for every model.
"""

from __future__ import annotations

import math
import re
import unicodedata
from functools import cache

import pandas as pd

#: Fields that hold several values, and the separator between them ("fever|headache").
MULTI_VALUED: dict[str, str] = {"uses": "|", "tags": "|", "composition": "+"}
#: Values that mean "not filled in" (compared after normalisation).
PLACEHOLDERS = frozenset({"n/a", "none", "null", "nan", "unknown"})
#: Characters dropped at either end of a value (inside a value they stay: "dr. reddy's", "vitamin b12/b6").
EDGE_PUNCTUATION = " .,;:!?-–—_*/\\|+()[]{}'\"`"

_COMPANY_SUFFIXES = re.compile(r"(?:[\s,]+(?:pvt|private|ltd|limited|inc|co|corp|llc)\.?)+$")
_UNIT = r"(?:mcg|μg|mg|gm|g|kg|ml|l|iu|%)"
_STRENGTH = re.compile(rf"\d[\d.,]*\s*{_UNIT}(?:\s*/\s*[\d.,]*\s*{_UNIT})?(?:\s*w/[wv])?(?![^\W\d_])")
_TRAILING_NUMBER = re.compile(r"\s\d[\w./%]*$")  # a strength without a unit: "amoxicillin 250"
_WORD = re.compile(r"[^\W\d_]{3,}")  # letters only, at least three


def is_missing(raw: object) -> bool:
    """None, NaN, pd.NA or a blank string."""
    if raw is None or raw is pd.NA:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    return isinstance(raw, str) and not raw.strip()


def normalise_text(text: object) -> str:
    """Unicode-compatible (NFKC), case-folded, whitespace collapsed; "" when missing.

    Punctuation inside the text stays: this is for running text (names, descriptions).
    """
    if is_missing(text):
        return ""
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def normalise_value(text: object) -> str:
    """One vocabulary value: normalise_text, punctuation stripped at the ends; "" for a placeholder."""
    value = normalise_text(text).strip(EDGE_PUNCTUATION)
    return "" if value in PLACEHOLDERS else value


def _clean(field: str, value: str) -> str:
    """Field-specific spelling variants removed from one normalised value."""
    value = value.strip()
    if field == "composition":  # molecules without strengths: substitutes share them
        value = _TRAILING_NUMBER.sub("", _STRENGTH.sub("", value))
    elif field == "manufacturer":
        value = _COMPANY_SUFFIXES.sub("", value)
    return normalise_value(value)


def field_values(field: str, raw: object) -> list[str]:
    """The normalised values of one meta field of one product, sorted and unique ([] when missing).

    Sorted so that "fever|headache" and "headache|fever" are the same product.
    """
    text = normalise_text(raw)
    if not text:
        return []
    separator = MULTI_VALUED.get(field)
    parts = text.split(separator) if separator else [text]
    return sorted({value for value in (_clean(field, part) for part in parts) if value})


def composition_parts(raw: object) -> list[tuple[str, str]]:
    """(molecule, strength) of each part of a composition, sorted; strength "" where none is given.

    "Paracetamol 500 mg + CAFFEINE 30mg" -> [("caffeine", "30mg"), ("paracetamol", "500mg")]: the key
    substitutes share (same molecules, same strengths), whatever the spelling.
    """
    text = normalise_text(raw)
    parts = []
    for part in text.split("+") if text else []:
        molecule = _clean("composition", part)
        if molecule:
            strength = _STRENGTH.search(part)
            parts.append((molecule, "".join(strength.group(0).split()) if strength else ""))
    return sorted(set(parts))


@cache
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def text_words(text: object) -> list[str]:
    """The distinct words of running text (letters only, 3+ long, no English stop words), sorted."""
    stop = _stop_words()
    return sorted({w for w in _WORD.findall(normalise_text(text)) if w not in stop})
