"""Data Docs: every validation run, passing or not, leaves GX pages a person can open, one folder per run."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.config import DataSettings, Paths, ValidateSettings
from pipelines.data.generate import generate_world
from pipelines.validate import DataValidationError, validate_tables
from pipelines.validate.data_docs import (
    airflow_run_folder,
    data_docs_root,
    data_docs_url,
    new_run_id,
    publish_data_docs,
)

SETTINGS = ValidateSettings(min_products=50, min_events=200)
SUITES = ["catalogue", "events", "catalogue_drift", "events_drift", "sessions_drift"]


@pytest.fixture(scope="module")
def world():
    return generate_world(DataSettings(n_products=200, n_users=300, seed=31), progress=False)


@pytest.fixture(scope="module")
def accepted(world):
    return validate_tables(world.catalogue, world.events, SETTINGS, source=world.source).profile


@pytest.fixture(autouse=True)
def _outside_airflow(monkeypatch) -> None:
    for name in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "RXREC_DATA_DOCS_DIR", "RXREC_DATA_DOCS_URL"):
        monkeypatch.delenv(name, raising=False)


def _links(page: Path) -> list[str]:
    return re.findall(r'href="([^"#:]+)"', page.read_text())  # relative links only


def test_passing_and_drifted_runs_each_keep_their_docs(world, accepted, tmp_path: Path) -> None:
    passing = validate_tables(world.catalogue, world.events, SETTINGS, source=world.source, accepted=accepted)
    prices_in_paise = world.catalogue.assign(price=world.catalogue["price"] * 100)
    drifted = validate_tables(prices_in_paise, world.events, SETTINGS, source=world.source, accepted=accepted)
    assert passing.success and not drifted.success

    pages = {name: publish_data_docs(report, tmp_path, name) for name, report in
             (("passing", passing), ("drifted", drifted))}
    for name, report in (("passing", passing), ("drifted", drifted)):
        page = pages[name]
        assert page == tmp_path / name / "index.html"
        text = page.read_text()
        assert ("PASSED" if report.success else "FAILED") in text
        for suite in SUITES:
            assert suite in text
        price = next(c for c in report.checks if c.suite == "catalogue_drift" and c.column == "price")
        assert price.expectation == "expect_column_median_to_be_between" and price.observed
        assert price.expectation in text and f"<td>{price.observed}</td>" in text
        for link in _links(page):  # the GX site and each suite's validation page are there
            assert (page.parent / link).exists(), link
        gx_pages = [link for link in _links(page) if link.startswith("gx/validations/")]
        assert len(gx_pages) == len(SUITES)
    drift_page = next(p for p in (pages["drifted"].parent / "gx" / "validations" / "catalogue_drift").rglob("*.html"))
    assert "Data asset: catalogue_drift" in drift_page.read_text() and "Failed" in drift_page.read_text()

    index = (tmp_path / "index.html").read_text()
    assert index.index('href="drifted/index.html"') < index.index('href="passing/index.html"')  # newest first
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["drifted", "passing"]
    assert not list((tmp_path / "passing" / "gx" / "static").rglob("*.gif"))  # GX's tutorial images pruned


def test_same_run_is_replaced_not_duplicated(world, tmp_path: Path) -> None:
    report = validate_tables(world.catalogue, world.events, SETTINGS, source=world.source)
    publish_data_docs(report, tmp_path, "retried")
    publish_data_docs(report, tmp_path, "retried")  # a retried Airflow task: same run, one folder
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["retried"]
    assert (tmp_path / "index.html").read_text().count('href="retried/index.html"') == 1


def test_run_ids(tmp_path: Path, monkeypatch) -> None:
    now = dt.datetime(2026, 12, 2, 18, 0, 5, tzinfo=dt.UTC)
    assert new_run_id(tmp_path, now) == "20261202T180005Z"
    (tmp_path / "20261202T180005Z").mkdir()
    assert new_run_id(tmp_path, now) == "20261202T180005Z-2"  # two runs in one second keep two folders
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "validate_data")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-12-02T00:00:00+00:00")
    folder = "validate_data__scheduled__2026-12-02T00_00_00_00_00"  # both DAGs may share a scheduled run id
    assert new_run_id(tmp_path, now) == folder
    assert airflow_run_folder("validate_data", "scheduled__2026-12-02T00:00:00+00:00") == folder


def test_location_and_url_follow_the_environment(world, tmp_path: Path, monkeypatch) -> None:
    paths = Paths(tmp_path)
    assert data_docs_root(paths) == tmp_path / "var" / "data_docs"
    monkeypatch.setenv("RXREC_DATA_DOCS_DIR", "served/docs")
    root = data_docs_root(paths)
    assert root == tmp_path / "served" / "docs"
    assert data_docs_url(paths) is None  # nothing published yet
    report = validate_tables(world.catalogue, world.events, SETTINGS, source=world.source)
    publish_data_docs(report, root, "older")
    publish_data_docs(report, root, "newer")
    assert data_docs_url(paths) == (root / "newer" / "index.html").as_uri()
    assert data_docs_url(paths, "older") == (root / "older" / "index.html").as_uri()
    assert data_docs_url(paths, "missing") is None
    monkeypatch.setenv("RXREC_DATA_DOCS_URL", "https://docs.example/data/")
    assert data_docs_url(paths, "older") == "https://docs.example/data/older/index.html"
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "older")  # inside a task: that run's docs, not the newest
    assert data_docs_url(paths) == "https://docs.example/data/older/index.html"


def test_stage_publishes_docs_before_the_gate_raises(workdir: Path, tiny_overrides: list[str]) -> None:
    """The validate stage links its docs in the summary and validation.json, failed runs included."""
    from pipelines.stages import run_stage

    run_stage("generate", tiny_overrides, workdir)
    summary = run_stage("validate", tiny_overrides, workdir)
    first = Path(summary["data_docs"])
    assert first.is_file() and first.is_relative_to(workdir / "var" / "data_docs")

    raw = workdir / "data" / "raw" / "catalogue.parquet"
    catalogue = pd.read_parquet(raw)
    pd.concat([catalogue, catalogue.head(3)]).to_parquet(raw, index=False)  # duplicated products
    with pytest.raises(DataValidationError) as info:
        run_stage("validate", tiny_overrides, workdir)
    saved = json.loads((workdir / "reports" / "pipeline" / "validation.json").read_text())
    second = Path(saved["data_docs"])
    assert second != first and second.is_file() and f"data docs: {second}" in str(info.value)
    assert "FAILED" in second.read_text() and "item_id must be unique" in second.read_text()
    index = (workdir / "var" / "data_docs" / "index.html").read_text()
    assert f'href="{second.parent.name}/index.html"' in index and f'href="{first.parent.name}/index.html"' in index
