import numpy as np
import pandas as pd
import pytest

from pipelines.data.text import (
    composition_parts,
    field_values,
    is_missing,
    normalise_text,
    normalise_value,
    text_words,
)


def test_field_values_normalise_inconsistent_meta_info():
    assert field_values("manufacturer", "Orion Healthcare Limited") == field_values("manufacturer", "orion HEALTHCARE")
    assert field_values("composition", "Paracetamol 500mg + Caffeine 30mg") == ["caffeine", "paracetamol"]
    assert field_values("uses", "fever|headache") == ["fever", "headache"]
    assert field_values("form", None) == [] and field_values("form", float("nan")) == []


@pytest.mark.parametrize("raw", [None, float("nan"), np.nan, pd.NA, "", "   ", "\t\n"])
def test_missing_values_are_missing_everywhere(raw):
    assert is_missing(raw)
    assert normalise_text(raw) == "" and field_values("uses", raw) == [] and text_words(raw) == []


@pytest.mark.parametrize("spelling", [
    "Sun Pharma", "SUN PHARMA LTD", "Sun Pharma Ltd.", "sun  pharma limited", "Sun Pharma Pvt. Ltd.",
    "Sun Pharma Private Limited", "Ｓｕｎ　Ｐｈａｒｍａ", "Sun\u00a0Pharma, Inc.", " Sun Pharma Co. ",
])
def test_manufacturer_spellings_are_one_value(spelling):
    assert field_values("manufacturer", spelling) == ["sun pharma"]


def test_company_suffix_is_only_stripped_at_the_end():
    assert field_values("manufacturer", "Limited Edition Labs") == ["limited edition labs"]


@pytest.mark.parametrize("composition", [
    "Paracetamol 500mg + Caffeine 30mg", "paracetamol 650 mg+caffeine 30 MG", "PARACETAMOL (500MG) + CAFFEINE",
    "Caffeine 30mg + Paracetamol 500mg", "Paracetamol 500 + Caffeine", "paracetamol 0.5 g + caffeine 30mg",
    "Paracetamol 500mg + Caffeine 30mg + Paracetamol 650mg", "Paracetamol 500mg ＋ Caffeine 30mg",
])
def test_compositions_are_molecules_without_strengths(composition):
    assert field_values("composition", composition) == ["caffeine", "paracetamol"]


def test_strength_units_and_numbers_inside_names_are_told_apart():
    assert field_values("composition", "Vitamin D3 1000 IU") == ["vitamin d3"]
    assert field_values("composition", "Cyanocobalamin 500µg") == ["cyanocobalamin"]
    assert field_values("composition", "Clotrimazole 1% w/w") == ["clotrimazole"]
    assert field_values("composition", "Amoxicillin 250mg/5ml") == ["amoxicillin"]
    assert field_values("composition", "Vitamin B12 5 lozenges") == ["vitamin b12 5 lozenges"]


def test_multi_valued_fields_split_sort_and_deduplicate():
    assert field_values("uses", "Headache | fever||FEVER|") == ["fever", "headache"]
    assert field_values("tags", "a12|a40") == ["a12", "a40"]
    assert field_values("therapeutic_class", "Cough and cold") == ["cough and cold"]  # not split
    assert field_values("form", "Tablet|Capsule") == ["tablet|capsule"]  # "|" separates uses and tags only


def test_placeholders_and_punctuation_only_values_are_dropped():
    assert field_values("uses", "N/A") == [] and field_values("form", "-") == [] and field_values("tags", "none|x") == ["x"]
    assert normalise_value("  'Analgesic.' ") == "analgesic"
    assert normalise_value("Dr. Reddy's") == "dr. reddy's"  # punctuation inside a value stays


def test_running_text_keeps_punctuation_and_words_drop_stop_words_and_numbers():
    assert normalise_text("Crocin  500mg\u00a0TABLET.\nFor fever") == "crocin 500mg tablet. for fever"
    assert normalise_text("ﬁlm-coated") == "film-coated"  # a ligature is two letters
    assert text_words("Crocin 500mg Tablet is used for FEVER and fever, 10 mg.") == ["crocin", "fever", "tablet", "used"]
    assert text_words("Café crème") == ["café", "crème"]


@pytest.mark.parametrize(("raw", "parts"), [
    ("Paracetamol 500 mg + CAFFEINE 30mg", [("caffeine", "30mg"), ("paracetamol", "500mg")]),
    ("paracetamol 500mg+caffeine 30mg", [("caffeine", "30mg"), ("paracetamol", "500mg")]),
    ("Vitamin D3 60000IU", [("vitamin d3", "60000iu")]),
    ("Clotrimazole 1%", [("clotrimazole", "1%")]),
    ("Amoxicillin 250", [("amoxicillin", "")]),  # a strength without a unit is not known
    (None, []),
])
def test_composition_parts_are_the_key_substitutes_share(raw, parts):
    assert composition_parts(raw) == parts
