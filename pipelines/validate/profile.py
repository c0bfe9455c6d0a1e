"""Data profile of an accepted version, and the GX drift checks that compare new data with it.

Why: a table can pass every row-level rule and still be wrong (an export that drops purchases,
sessions glued together by a broken session id, prices suddenly in paise). The gate therefore
compares the distribution of each new version with the last version it accepted from the *same
source* (`signature` in source.json): event-type mix (KL divergence), session length (mean,
median, p90), share of events on unknown items, median price and share of described products.
The profile is small JSON; the stage keeps the accepted one at data/accepted_profile.json
(a DVC `persist` output, so `dvc repro` does not delete it) and a copy in data/validated/.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from pipelines.core.config import ValidateSettings
from pipelines.core.files import atomic_write_text
from pipelines.validate.suites import CATALOGUE, EVENTS, KNOWN_IDS_PARAM, ColumnProblems, SuiteBuild, _Builder

ACCEPTED_PROFILE = Path("data") / "accepted_profile.json"  # relative to the work directory
PROFILE_FILE = "profile.json"  # the validated version's own profile, next to its tables
SESSIONS = "sessions"  # derived table: one row per session with its length
SESSION_LENGTH_COL = "session_length"


class DataProfile(BaseModel):
    """Distribution summary of one data version (None where a column was unusable)."""

    dataset: str = ""
    signature: str = ""
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    products: int = 0
    events: int = 0
    event_type_share: dict[str, float] | None = None
    session_length: dict[str, float] | None = None  # mean, median, p90
    unknown_item_share: float | None = None
    price_median: float | None = None
    description_share: float | None = None

    def save(self, path: Path) -> Path:
        atomic_write_text(path, self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> DataProfile | None:
        """The profile at `path`, or None when there is none (first run) or it is unreadable."""
        if not path.exists():
            return None
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (ValueError, json.JSONDecodeError):
            return None


def session_lengths(events: pd.DataFrame) -> pd.DataFrame:
    """One row per session: how many events it has (the derived table the length checks run on)."""
    sizes = events.groupby("session_id", sort=False, dropna=True).size()
    return pd.DataFrame({SESSION_LENGTH_COL: sizes.to_numpy(dtype=np.float64)})


def profile_tables(catalogue: pd.DataFrame, events: pd.DataFrame, cat_problems: ColumnProblems,
                   ev_problems: ColumnProblems, source: dict[str, Any] | None = None) -> DataProfile:
    """Profile what is usable; columns that failed the schema check are left as None."""
    source = source or {}
    out = DataProfile(dataset=str(source.get("dataset", "")), signature=str(source.get("signature", "")),
                      products=len(catalogue), events=len(events))
    if "event_type" in ev_problems.typed and len(events):
        shares = events["event_type"].astype("str").value_counts(normalize=True)
        out.event_type_share = {str(k): round(float(v), 6) for k, v in shares.sort_index().items()}
    if "session_id" in ev_problems.present and len(events):
        lengths = session_lengths(events)[SESSION_LENGTH_COL]
        out.session_length = {"mean": round(float(lengths.mean()), 4), "median": float(lengths.median()),
                              "p90": float(lengths.quantile(0.9))}
    if "item_id" in ev_problems.typed and "item_id" in cat_problems.typed and len(events):
        out.unknown_item_share = round(float((~events["item_id"].isin(catalogue["item_id"].dropna())).mean()), 6)
    if "price" in cat_problems.typed and catalogue["price"].notna().any():
        out.price_median = float(catalogue["price"].median())
    if "description" in cat_problems.present and len(catalogue):
        out.description_share = round(float(catalogue["description"].notna().mean()), 6)
    return out


def drift_status(settings: ValidateSettings, reference: DataProfile | None, current: DataProfile) -> str:
    """Why drift checks do or do not run (shown in the report)."""
    if not settings.drift_checks:
        return "drift checks off (validate.drift_checks: false)"
    if reference is None:
        return "no accepted profile yet: this version becomes the reference when it passes"
    if reference.signature != current.signature:
        return (f"accepted profile is from another source ({reference.signature or '?'}, now "
                f"{current.signature or '?'}): drift checks skipped, this version becomes the reference")
    return f"compared with the version accepted at {reference.created_at} ({reference.events:,} events)"


def _band(value: float, rel: float) -> tuple[float, float]:
    return value * (1 - rel), value * (1 + rel)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def build_drift_suites(settings: ValidateSettings, reference: DataProfile, cat_problems: ColumnProblems,
                       ev_problems: ColumnProblems) -> dict[str, SuiteBuild]:
    """GX suites (catalogue, events, sessions) that hold new data to the accepted profile's bands."""
    import great_expectations.expectations as gxe

    cat = _Builder("catalogue_drift", CATALOGUE, cat_problems)
    ev = _Builder("events_drift", EVENTS, ev_problems)
    ses = _Builder("sessions_drift", EVENTS, ev_problems)
    if reference.event_type_share:
        values = [k for k, v in reference.event_type_share.items() if v > 0]
        weights = np.array([reference.event_type_share[k] for k in values])
        mix = ", ".join(f"{k} {v:.1%}" for k, v in reference.event_type_share.items())
        ev.add(gxe.ExpectColumnKLDivergenceToBeLessThan,
               f"event-type mix must stay close to the accepted one ({mix}): KL divergence <= "
               f"{settings.max_event_mix_kl} (validate.max_event_mix_kl)",
               column="event_type", needs_typed=["event_type"],
               partition_object={"values": values, "weights": (weights / weights.sum()).tolist()},
               threshold=settings.max_event_mix_kl, drift=True)
    if reference.session_length:
        rel = settings.max_session_length_change
        ref = reference.session_length
        lo, hi = _band(ref["mean"], rel)
        ses.add(gxe.ExpectColumnMeanToBeBetween,
                f"mean session length must stay within ±{rel:.0%} of the accepted {_fmt(ref['mean'])} events "
                f"(validate.max_session_length_change)",
                column=SESSION_LENGTH_COL, report_column="session_length", needs_present=["session_id"], min_value=lo, max_value=hi, drift=True)
        lo, hi = _band(ref["median"], rel)
        ses.add(gxe.ExpectColumnMedianToBeBetween,
                f"median session length must stay within ±{rel:.0%} of the accepted {_fmt(ref['median'])}",
                column=SESSION_LENGTH_COL, report_column="session_length", needs_present=["session_id"], min_value=lo, max_value=hi, drift=True)
        lo, hi = _band(ref["p90"], rel)
        ses.add(gxe.ExpectColumnQuantileValuesToBeBetween,
                f"90th percentile of session length must stay within ±{rel:.0%} of the accepted {_fmt(ref['p90'])}",
                column=SESSION_LENGTH_COL, report_column="session_length",
                quantile_ranges={"quantiles": [0.9], "value_ranges": [[lo, hi]]}, allow_relative_error="linear",
                drift=True)
    if reference.unknown_item_share is not None:
        allowed = min(1.0, reference.unknown_item_share + settings.max_unknown_share_increase)
        ev.add(gxe.ExpectColumnValuesToBeInSet,
               f"share of events on items missing from the catalogue must stay <= {allowed:.2%} (accepted "
               f"{reference.unknown_item_share:.2%} + validate.max_unknown_share_increase)",
               column="item_id", needs_typed=["item_id"], value_set={"$PARAMETER": KNOWN_IDS_PARAM},
               mostly=1.0 - allowed, drift=True)
    if reference.price_median is not None:
        rel = settings.max_price_median_change
        lo, hi = _band(reference.price_median, rel)
        cat.add(gxe.ExpectColumnMedianToBeBetween,
                f"median price must stay within ±{rel:.0%} of the accepted {_fmt(reference.price_median)} "
                f"(a unit or currency change?) (validate.max_price_median_change)",
                column="price", needs_typed=["price"], min_value=lo, max_value=hi, drift=True)
    if reference.description_share is not None:
        share = reference.description_share
        cat.add(gxe.ExpectColumnProportionOfNonNullValuesToBeBetween,
                f"share of products with a description must stay within ±10 points of the accepted {share:.1%}",
                column="description", needs_present=["description"], min_value=max(0.0, share - 0.1),
                max_value=min(1.0, share + 0.1), drift=True)
    return {CATALOGUE: cat.build, EVENTS: ev.build, SESSIONS: ses.build}
