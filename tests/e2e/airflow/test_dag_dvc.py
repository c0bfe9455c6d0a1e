"""Two runs of retrain_and_promote through the real Airflow execute their stages through DVC.

The runs are the session's (tests/e2e/airflow/conftest.py `retrain_runs`): the first from the UI's form with promotion
on, the second through the REST API right after it, with one model family's param changed (gpt4rec_epochs).
Real components: Airflow 3 with the LocalExecutor, DVC in each run's workspace (pipelines/stages/dvc_run.py),
git refs of this repository. The second run skips every stage that does not depend on the change (listed
with the seconds saved), both runs leave a dvc.lock on their ref, and `dvc params diff` / `dvc metrics diff`
between the refs show exactly that change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow,
              pytest.mark.timeout(2900)]  # may start the session's services (420 s) and its two runs (1500 + 900 s)
REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def _dvc_json(*args: str) -> dict:
    done = subprocess.run([str(BIN / "dvc"), *args, "--json"], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _downstream(stages: dict, stage: str) -> set[str]:
    outs = {n: [str(p) for e in (s.get("outs") or []) + (s.get("metrics") or []) + (s.get("plots") or [])
                for p in (e if isinstance(e, dict) else [e])] for n, s in stages.items()}
    found, todo = set(), [stage]
    while todo:
        a = todo.pop()
        for b, spec in stages.items():
            deps = [str(d) for d in spec.get("deps") or []]
            if b not in found and any(d == o or d.startswith(o + "/") for o in outs[a] for d in deps):
                found.add(b)
                todo.append(b)
    return found


def test_a_changed_family_param_reruns_only_what_depends_on_it(airflow_server, retrain_runs):
    first, second = retrain_runs.first, retrain_runs.second
    assert {k: v for k, v in second.conf.items() if first.conf.get(k) != v} == {"gpt4rec_epochs": 2}
    refs = [airflow_server.workspace(run.run_id).ref for run in (first, second)]
    summaries = [json.loads(_git("show", f"{ref}:run_summary.json")) for ref in refs]
    stages = yaml.safe_load(_git("show", f"{refs[0]}:dvc.yaml"))["stages"]  # the runs' pipeline
    # Promotion is on in both runs: deploy and serve_check run through DVC like every other stage.
    assert first.conf["promote"] and second.conf["promote"]
    affected = {"train_gpt4rec"} | _downstream(stages, "train_gpt4rec")
    assert set(summaries[0]["ran"]) == set(stages)
    assert set(summaries[1]["ran"]) == affected
    assert set(summaries[1]["skipped"]) == set(stages) - affected
    print(f"\nsecond run skipped {summaries[1]['skipped']}, saved {summaries[1]['seconds_saved']} "
          f"({summaries[1]['seconds_saved_total']} s in all)")
    assert summaries[1]["seconds_saved_total"] > 0
    for ref in refs:
        lock = yaml.safe_load(_git("show", f"{ref}:dvc.lock"))
        assert set(stages) <= set(lock["stages"]), ref
    params = _dvc_json("params", "diff", *refs)
    assert {f: {k: (v["old"], v["new"]) for k, v in d.items()} for f, d in params.items()} == {
        "params.yaml": {"gpt4rec.epochs": (3, 2)}}
    metrics = _dvc_json("metrics", "diff", *refs)
    changed = {path for path, values in metrics.items() if values}
    produced_by = {str(p): name for name, s in stages.items() for e in s.get("metrics") or []
                   for p in (e if isinstance(e, dict) else [e])}
    assert changed and all(produced_by[path] in affected for path in changed), metrics
