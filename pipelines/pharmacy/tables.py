"""Build the safety policy's tables from the catalogue and a drug-interaction table.

The interaction table is a CSV with a header and one pair per row (docs/pharmacy.md):

    molecule_a,molecule_b,severity,source
    Ciprofloxacin,Calcium Carbonate,major,FDA label: Cipro (ciprofloxacin) - 7 Drug Interactions

Molecule names are matched after the catalogue-text normaliser (case, unicode, strengths dropped),
so "CIPROFLOXACIN 500mg" in a composition and "Ciprofloxacin" here are one molecule. `severity` is
major, moderate or minor; params.yaml `policy.block_severities` says which ones are enforced.
`source` names where the pair comes from (a label, a monograph) and may not be empty. A bad row
stops the build with its line number; nothing is written.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.text import field_values, is_missing
from pipelines.pharmacy.served import SafetyTables, csr_rows, normalise_location

#: The interaction table shipped for the generated world's molecules (real, well-known pairs).
DEFAULT_INTERACTIONS = Path(__file__).with_name("interactions.csv")
INTERACTION_COLUMNS = ("molecule_a", "molecule_b", "severity", "source")
SEVERITIES = ("major", "moderate", "minor")
#: Catalogue columns the policy reads; each may be absent (then nothing is flagged by it).
RX_COLUMN, RESTRICTED_COLUMN, IN_STOCK_COLUMN = "rx_required", "restricted", "in_stock"
DELIVERABLE_COLUMN = "deliverable_to"


class InteractionTableError(ValueError):
    """A row of an interaction table that cannot be used; the message names the file and line."""


def _molecule(name: str) -> str:
    values = field_values("composition", name)
    return values[0] if len(values) == 1 else ""


def read_interactions(path: Path, block_severities: tuple[str, ...] = ("major", "moderate")) -> list[tuple[str, str]]:
    """The (molecule, molecule) pairs of `path` whose severity is blocked, normalised; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise InteractionTableError(f"{path}: interaction table not found")
    unknown = sorted(set(block_severities) - set(SEVERITIES))
    if unknown:
        raise InteractionTableError(f"policy.block_severities holds {unknown}; severities are {list(SEVERITIES)}")
    pairs: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if tuple(header) != INTERACTION_COLUMNS:
            raise InteractionTableError(f"{path}:1: header must be {','.join(INTERACTION_COLUMNS)}, got {','.join(header)}")
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(INTERACTION_COLUMNS):
                raise InteractionTableError(f"{path}:{line}: expected {len(INTERACTION_COLUMNS)} fields "
                                            f"({','.join(INTERACTION_COLUMNS)}), got {len(row)}")
            raw_a, raw_b, severity, source = (cell.strip() for cell in row)
            a, b = _molecule(raw_a), _molecule(raw_b)
            for raw, name in ((raw_a, a), (raw_b, b)):
                if not name:
                    raise InteractionTableError(f"{path}:{line}: {raw!r} is not one molecule name")
            if a == b:
                raise InteractionTableError(f"{path}:{line}: a molecule cannot interact with itself ({raw_a!r})")
            if severity.lower() not in SEVERITIES:
                raise InteractionTableError(f"{path}:{line}: severity {severity!r} is not one of {list(SEVERITIES)}")
            if not source:
                raise InteractionTableError(f"{path}:{line}: source is empty; name where the pair comes from")
            if severity.lower() in block_severities:
                pairs.append((a, b))
    return pairs


def _flag(catalogue: pd.DataFrame, column: str, n_items: int, true_means_flagged: bool = True) -> np.ndarray:
    """bool [n + 1]: items whose sparse catalogue flag is set (absent or null = not flagged)."""
    out = np.zeros(n_items + 1, dtype=bool)
    if column not in catalogue.columns:
        return out
    values = catalogue[column]
    known = values.notna().to_numpy()
    flagged = values[known].astype(bool).to_numpy() == true_means_flagged
    ids = catalogue["item_id"].to_numpy(dtype=np.int64)[known][flagged]
    out[ids[(ids >= 1) & (ids <= n_items)]] = True
    return out


def _delivery(catalogue: pd.DataFrame, n_items: int) -> dict[str, np.ndarray]:
    """The delivery tables from the sparse `deliverable_to` (pipe-separated postcode prefixes; absent: everywhere)."""
    limited = np.zeros(n_items + 1, dtype=bool)
    regions: dict[str, set[int]] = {}
    if DELIVERABLE_COLUMN in catalogue.columns:
        for item, value in zip(catalogue["item_id"].to_numpy(dtype=np.int64),
                               catalogue[DELIVERABLE_COLUMN].to_numpy(dtype=object), strict=True):
            codes = [] if is_missing(value) else [normalise_location(c) for c in str(value).split("|")]
            codes = [c for c in codes if c]
            if codes and 1 <= item <= n_items:
                limited[item] = True
                for code in codes:
                    regions.setdefault(code, set()).add(int(item))
    names = sorted(regions)
    lengths = np.array([len(regions[c]) for c in names], dtype=np.int64)
    return {"delivery_limited": limited, "region_codes": np.array(names, dtype=str) if names else np.zeros(0, "<U1"),
            "region_indptr": np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            "region_items": np.array([i for c in names for i in sorted(regions[c])], dtype=np.int64)}


def build_safety_tables(catalogue: pd.DataFrame, n_items: int, interactions: list[tuple[str, str]]) -> SafetyTables:
    """Tables over item ids 0..n_items from the catalogue's composition and flags and the blocked pairs."""
    ids = catalogue["item_id"].to_numpy(dtype=np.int64)
    keep = (ids >= 1) & (ids <= n_items)
    compositions = catalogue["composition"] if "composition" in catalogue.columns else pd.Series([None] * len(ids))
    per_item: dict[int, list[str]] = {int(i): field_values("composition", c)
                                      for i, c in zip(ids[keep], compositions.to_numpy()[keep], strict=True)}
    names = sorted({m for ms in per_item.values() for m in ms} | {m for pair in interactions for m in pair})
    index = {name: i for i, name in enumerate(names)}
    indptr, indices = csr_rows({item: [index[m] for m in ms] for item, ms in per_item.items()}, n_items + 1)
    pairs = np.array(sorted({tuple(sorted((index[a], index[b]))) for a, b in interactions}),
                     dtype=np.int64).reshape(-1, 2)
    tables = SafetyTables(
        rx_required=_flag(catalogue, RX_COLUMN, n_items), restricted=_flag(catalogue, RESTRICTED_COLUMN, n_items),
        unavailable=_flag(catalogue, IN_STOCK_COLUMN, n_items, true_means_flagged=False),
        molecule_indptr=indptr, molecule_indices=indices, molecule_names=np.array(names, dtype=str),
        interacting_pairs=pairs, **_delivery(catalogue, n_items))
    tables.check()
    return tables
