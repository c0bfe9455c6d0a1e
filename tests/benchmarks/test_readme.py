"""The README's quoted figures equal the reports' (benchmarks/readme.py), and every report names its code."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from benchmarks.common import REPORTS, write_report
from benchmarks.readme import README, ReadmeFiguresError, passages, render
from pipelines.core.config import PROJECT_ROOT

LEVEL = {"mode": "open", "target_rps": 1000.0, "requests_per_min": 60_123.4, "p99_ms": 12.345, "errors": 0,
         "duration_s": 30.0}
SERVE = {"machine": {"measured_at": "2026-12-03T01:02:03+00:00", "cpu_count": 2}, "passed": True,
         "code": {"git_commit": "0123456789abcdef", "command": "rxrec bench serve"},
         "results": {"50": {"source": "a trained GPT4Rec, 3,000 items", "target": {"p99_ms": 20.0,
                                                                                   "requests_per_min": 60000},
                            "ort_floor": {"batch1_p99_ms": 0.5},
                            "levels": [{**LEVEL, "target_rps": 500.0, "p99_ms": 99.0}, LEVEL,
                                       {**LEVEL, "mode": "closed", "target_rps": None}]}}}
README_TEXT = "intro\n<!-- figures: serve -->\nold text\n<!-- /figures -->\noutro\n"


def test_the_readme_quotes_what_the_reports_say_now():
    text = README.read_text()
    assert set(passages(text)) == {"serve", "reliability", "placements", "serve_recommend", "quality"}, \
        "the README lost a figures passage"
    rendered = passages(render(text, REPORTS))
    stale = [n for n, body in passages(text).items() if rendered[n] != body]
    assert not stale, f"README figures differ from reports/ in {stale}: run `rxrec bench readme`"


def test_a_passage_is_the_reports_figures_at_the_judged_level(tmp_path):
    (tmp_path / "serve.json").write_text(json.dumps(SERVE))
    out = render(README_TEXT, tmp_path)
    body = passages(out)["serve"]
    assert out.startswith("intro\n<!-- figures: serve -->\n") and out.endswith("<!-- /figures -->\noutro\n")
    assert "old text" not in out and "commit 0123456789ab, 2026-12-03" in body
    assert "60,123 requests/min with p99 12.3 ms and 0 errors" in body  # the top open level, not the 500/s one
    assert "p99 <= 20 ms at 60,000/min" in body and "overall PASS." in body

    older = copy.deepcopy(SERVE)
    older["code"] = {"git_commit": None, "note": "Measured before X."}
    (tmp_path / "serve.json").write_text(json.dumps(older))
    body = passages(render(README_TEXT, tmp_path))["serve"]
    assert "commit not recorded" in body and body.endswith("overall PASS (Measured before X).\n")


def test_the_quality_passage_quotes_every_leaderboard_with_its_seeds_spread(tmp_path):
    row = {"hr_at_10": 0.40712, "ndcg_at_10": 0.26831, "train_seconds": 261.6,
           "spread": {"hr_at_10": 0.00134, "ndcg_at_10": 0.0014}}
    report = {"machine": {"measured_at": "2026-12-03T01:02:03+00:00"}, "dataset": "synthetic", "seeds": [42, 43, 44],
              "recipe": "quality", "protocol": {"users": 11067}, "code": {"git_commit": "0123456789abcdef"},
              "models": {"gpt4rec": row, "rules": {"hr_at_10": 0.3774, "ndcg_at_10": 0.2432, "train_seconds": 0.04}}}
    (tmp_path / "quality-synthetic.json").write_text(json.dumps(report))
    text = "<!-- figures: quality -->\n<!-- /figures -->\n"
    body = passages(render(text, tmp_path))["quality"]
    assert "commit 0123456789ab, 2026-12-03; synthetic, 11,067 test users, all-item ranking; 3 seeds; recipe `quality`" \
        in body
    assert "| gpt4rec | 0.4071 ± 0.0013 | 0.2683 ± 0.0014 | 262 |" in body and "| rules | 0.3774 | 0.2432 | 0 |" in body
    (tmp_path / "quality-synthetic.json").unlink()
    with pytest.raises(ReadmeFiguresError, match="no quality-"):
        render(text, tmp_path)


def test_a_missing_report_or_unknown_passage_is_one_clear_error(tmp_path):
    with pytest.raises(ReadmeFiguresError, match=r"serve.json, which does not exist: run `rxrec bench serve`"):
        render(README_TEXT, tmp_path)
    with pytest.raises(ReadmeFiguresError, match=r"unknown figures passage 'speed'"):
        render("<!-- figures: speed -->\n<!-- /figures -->\n", tmp_path)


def test_a_report_records_the_commit_command_and_params_it_ran_with(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["rxrec", "bench", "serve", "--seconds", "5"])
    path = write_report("demo", {"figure": 1}, "# Demo\n", tmp_path)
    body = json.loads(path.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert body["code"]["git_commit"].removesuffix("-dirty") == head
    assert body["code"]["command"] == body["command"] == "rxrec bench serve --seconds 5"
    assert len(body["code"]["params_md5"]) == 32 and body["figure"] == 1
    markdown = (tmp_path / "demo.md").read_text()
    assert markdown.startswith("# Demo\n") and f"Code: commit `{body['code']['git_commit']}`" in markdown


@pytest.mark.parametrize("report", sorted(p.name for p in REPORTS.glob("*.json")))
def test_every_report_names_the_code_it_measured_or_says_it_is_older(report):
    code = json.loads((REPORTS / report).read_text()).get("code") or {}
    assert code.get("git_commit") or "older than" in code.get("note", ""), f"reports/{report} names no code commit"
    assert code.get("command"), f"reports/{report} names no command"
