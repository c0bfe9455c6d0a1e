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
    assert set(passages(text)) == {"serve", "reliability", "placements", "serve_recommend", "quality", "scale"}, \
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


def test_the_serve_passage_quotes_each_catalogue_at_its_worst_repeat(tmp_path):
    worst = {"500": {"requests_per_min": 30_000.0, "p99_ms": 4.0, "p99_ms_spread": [3.0, 4.0], "errors": 0},
             "1050": {"requests_per_min": 62_512.0, "p99_ms": 18.25, "p99_ms_spread": [9.5, 18.25], "errors": 0}}
    result = {"catalogue": "synthetic-100000", "n_items": 100_000, "length": 50, "worst": worst, "passed": True,
              "target": {"p99_ms": 20.0, "requests_per_min": 60000}, "ort_floor": {"batch1_p99_ms": 1.234},
              "source": "GPT4Rec trained by the pipeline on synthetic-100000"}
    entry = {**result, "entry": "recommend", "worst": {"500": {**worst["500"], "p99_ms": 31.0, "p99_ms_spread": [20.0, 31.0]}}, "passed": False,
             "target": {"p99_ms": 25.0, "requests_per_min": 30000}, "ort_floor": None, "source": "recommend as deployed"}
    report = {**SERVE, "results": [result, entry], "server": {"triton": "tritonserver 2.51.0"},
              "load_generator": {"repeats": 3, "duration_s": 30.0}}
    (tmp_path / "serve.json").write_text(json.dumps(report))
    body = passages(render(README_TEXT, tmp_path))["serve"]
    assert "each level 3 times, 30 s each, the worst counts" in body and "tritonserver 2.51.0" in body
    assert ("| synthetic-100000 | 100,000 | gpt4rec | 50 | 62,512 | 18.2 (9.5–18.2) | 0 | p99 <= 20 ms at "
            "60,000/min: pass | 1.23 | GPT4Rec trained by the pipeline on synthetic-100000 |") in body  # top rate
    assert ("| synthetic-100000 | 100,000 | recommend | 50 | 30,000 | 31.0 (20.0–31.0) | 0 | p99 <= 25 ms at "
            "30,000/min: FAIL | - | recommend as deployed |") in body
    assert body.endswith("Overall PASS.\n")


def test_the_scale_passage_quotes_every_world_and_the_target(tmp_path):
    stage = {"stage": "generate", "status": "ok", "wall_s": 12.0, "cpu_s": 11.0, "peak_rss_gb": 0.5, "error": ""}
    slow = {**stage, "stage": "train_gpt4rec", "wall_s": 3000.0, "status": "timed out"}
    sizes = [{"products": 3000, "users": 12000, "events": 170_000, "wall_s": 12.0, "peak_rss_gb": 0.5,
              "stages": [stage], "complete": True},
             {"products": 100_000, "users": 1_200_000, "events": 20_000_000, "wall_s": 3012.0, "peak_rss_gb": 3.0,
              "stages": [stage, slow], "complete": False,
              "measured": {"code": {"git_commit": "fedcba9876543210"}, "measured_at": "2026-12-05T00:00:00"}}]
    report = {**SERVE, "chain": ["generate", "train_gpt4rec"], "sizes": sizes, "chain_limit_s": 7200.0,
              "memory_limit_gb": 12.0, "growth": {"generate": {"worse_than_nlogn": False}},
              "verdict": {"world": "100,000 products, 1,200,000 users", "met": False, "events": 20_000_000,
                          "stopped_at": {"stage": "train_gpt4rec", "status": "timed out"}}}
    (tmp_path / "scale.json").write_text(json.dumps(report))
    body = passages(render("<!-- figures: scale -->\n<!-- /figures -->\n", tmp_path))["scale"]
    assert "| 3,000 | 12,000 | 170,000 | 12 | 0.50 | generate 12 |" in body
    assert "train_gpt4rec 3,000 (timed out), generate 12 (kept from commit fedcba987654, 2026-12-05) |" in body
    assert "not met, stopped at train_gpt4rec (timed out). Stages growing worse than n log n: none." in body
    report["verdict"] |= {"events": 518_014, "met": True, "stopped_at": None}  # a small world: not judged
    (tmp_path / "scale.json").write_text(json.dumps(report))
    body = passages(render("<!-- figures: scale -->\n<!-- /figures -->\n", tmp_path))["scale"]
    assert "not judged yet (it is set for the ~100x world; the largest measured has 518,014 events)." in body


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


def test_a_report_names_the_code_it_started_on_when_the_tree_moved_while_it_ran(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["rxrec", "bench", "scale"])
    started = {"git_commit": "f" * 40, "command": "rxrec bench scale", "params_md5": "0" * 32}
    monkeypatch.setattr("benchmarks.common._STARTED", started)
    body = json.loads(write_report("demo", {}, "# Demo\n", tmp_path).read_text())
    assert body["code"]["git_commit"] == "f" * 40 and body["code"]["params_md5"] == "0" * 32
    assert body["code"]["git_commit_at_write"] not in ("", "f" * 40)
    assert "when the report was written" in (tmp_path / "demo.md").read_text()


@pytest.mark.parametrize("report", sorted(p.name for p in REPORTS.glob("*.json")))
def test_every_report_names_the_code_it_measured_or_says_it_is_older(report):
    code = json.loads((REPORTS / report).read_text()).get("code") or {}
    assert code.get("git_commit") or "older than" in code.get("note", ""), f"reports/{report} names no code commit"
    assert code.get("command"), f"reports/{report} names no command"
