"""The `rxrec` command: a thin shell over pipelines.stages and the library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pipelines.core.config import PROJECT_ROOT, Paths, SettingsError, load_settings
from pipelines.stages import STAGES, run_stage

app = typer.Typer(add_completion=False, no_args_is_help=True, help="rxrec: recommendations for an online pharmacy.")

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a param: section.key=value (repeatable), e.g. gpt4rec.epochs=2"),
]
PIPELINE = tuple(STAGES)  # dvc.yaml order


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _run(name: str, overrides: list[str]) -> dict:
    from pipelines.core.retry import ServiceUnavailable
    from pipelines.data.adapters import SourceError
    from pipelines.serve.endpoint import TritonEndpointError, TritonUnreachable
    from pipelines.validate.gate import DataValidationError

    typer.secho(f"▶ {name}", bold=True)
    try:
        summary = run_stage(name, overrides)
    except (SettingsError, DataValidationError, FileNotFoundError, ServiceUnavailable, SourceError,
            TritonEndpointError, TritonUnreachable) as exc:
        _fail(f"stage {name} stopped: {exc}")
    typer.echo("  " + json.dumps(summary, default=str)[:400])
    return summary


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"one of: {', '.join(PIPELINE)}")],
    set_: SetOption = None,
) -> None:
    """Run one pipeline stage (what each dvc.yaml stage and Airflow task calls)."""
    if name not in PIPELINE:
        _fail(f"unknown stage {name!r}; stages are: {', '.join(PIPELINE)}")
    _run(name, set_ or [])


@app.command("dvc-yaml")
def dvc_yaml(
    write: Annotated[bool, typer.Option("--write", help="rewrite dvc.yaml from the stage declarations")] = False,
) -> None:
    """Render dvc.yaml from the stage declarations (pipelines/stages/declare.py); without --write, check it."""
    from pipelines.stages.declare import DVC_YAML, render_dvc_yaml

    rendered = render_dvc_yaml()
    if write:
        DVC_YAML.write_text(rendered)
        typer.echo(f"wrote {DVC_YAML}")
    elif DVC_YAML.read_text() != rendered:
        _fail(f"{DVC_YAML} differs from the stage declarations: run `rxrec dvc-yaml --write`")
    else:
        typer.echo(f"{DVC_YAML} follows the stage declarations")


@app.command()
def run(
    set_: SetOption = None,
    from_: Annotated[str, typer.Option("--from", help="first stage to run")] = PIPELINE[0],
    to: Annotated[str, typer.Option("--to", help="last stage to run")] = PIPELINE[-1],
) -> None:
    """Run the stages in order in this process, with overrides (no DVC caching)."""
    for option, value in (("--from", from_), ("--to", to)):
        if value not in PIPELINE:
            _fail(f"{option} {value!r} is not a stage; stages are: {', '.join(PIPELINE)}")
    first, last = PIPELINE.index(from_), PIPELINE.index(to)
    for name in PIPELINE[first:last + 1]:
        _run(name, set_ or [])


@app.command()
def demo(
    use_dvc: Annotated[bool, typer.Option("--dvc/--no-dvc", help="run the graph with `dvc repro` (cached)")] = True,
) -> None:
    """Run the whole chain on the generated world, then print what it produced."""
    started = time.perf_counter()
    if use_dvc:
        dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        code = subprocess.call([dvc, "repro"], cwd=PROJECT_ROOT, env=env)
        if code != 0:
            _fail(f"`dvc repro` failed (exit {code}); the failing stage's message is above")
    else:
        for name in PIPELINE:
            _run(name, [])
    summary(elapsed=time.perf_counter() - started)


@app.command()
def summary(elapsed: Annotated[float, typer.Option(hidden=True)] = 0.0) -> None:
    """Print the last run's validation result, metrics, registry entry, deployment and answers."""
    paths = Paths()
    settings = load_settings()
    reports = paths.reports

    def read(name: str) -> dict:
        path = reports / name
        return json.loads(path.read_text()) if path.exists() else {}

    validation, metrics = read("validation.json"), read("metrics.json")
    registry, deploy, served = read("registry.json"), read("deploy.json"), read("serve_check.json")
    line = "─" * 78
    typer.echo(f"\n{line}\nrxrec demo summary" + (f"  ({elapsed / 60:.1f} min)" if elapsed else ""))
    typer.echo(line)
    if validation:
        failed = sum(1 for c in validation.get("checks", []) if c.get("success") is False)
        status = "PASSED" if validation.get("success") else "FAILED"
        typer.echo(f"Data validation (Great Expectations): {status}, {len(validation.get('checks', []))} checks, "
                   f"{failed} failed  → {reports / 'validation.md'}")
    if metrics:
        k = metrics["protocol"]["k"]
        typer.echo(f"\nTest metrics (leave-one-out, all {k}-item ranking against every item, seen items masked):")
        typer.echo(f"  {'model':<12}{'HR@' + str(k):>10}{'NDCG@' + str(k):>10}{'MRR':>10}{'coverage':>10}{'train s':>10}")
        for name, m in metrics["models"].items():
            typer.echo(f"  {name:<12}{m[f'hr_at_{k}']:>10.4f}{m[f'ndcg_at_{k}']:>10.4f}{m['mrr']:>10.4f}"
                       f"{m[f'coverage_at_{k}']:>10.3f}{m['train_seconds']:>10.1f}")
    if registry:
        typer.echo(f"\nMLflow run {registry['run_id']}  model {registry['model_name']} v{registry['version']}  "
                   f"champion: v{registry['champion_version']}  ({registry['reason']})")
    if deploy:
        typer.echo(f"Triton model repository version: {deploy['version_path']}")
    if served:
        typer.echo(f"\nReal Triton server answered (start {served['server_start_s']} s, model load "
                   f"{served['model_load_s']} s, batch of {len(served['sessions'])} in {served['batch_latency_ms']} ms, "
                   f"same as ONNX Runtime: {served['matches_onnx_runtime']}):")
        for i, session in enumerate(served["sessions"], 1):
            typer.echo(f"  session {i}: … " + " → ".join(h["name"] for h in session["history"]))
            for rank, rec in enumerate(session["recommended"][:5], 1):
                typer.echo(f"      {rank}. {rec['name']}  (item {rec['item_id']}, score {rec['score']:.2f})")
    uri = paths.tracking_uri(settings)
    typer.echo(f"\nOpen the MLflow UI on these results:\n  make mlflow    "
               f"# or: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    typer.echo(f"Reports: {reports}/  (metrics.png, validation.md, parity.json)\n{line}")


INT64_MAX = 2**63 - 1


def _id_list(text: str, option: str) -> list[int]:
    """Comma-separated item ids (ASCII digits, >= 1); blank entries are skipped. Exits with a clear error."""
    ids = []
    for part in text.split(","):
        word = part.strip()
        if not word:
            continue
        if not (word.isascii() and word.isdigit()):
            _fail(f"{option} must be comma-separated item ids (integers >= 1, e.g. 12,45,7); "
                  f"{word[:40]!r} is not one")
        value = int(word) if len(word) <= 19 else INT64_MAX + 1
        if not 1 <= value <= INT64_MAX:
            _fail(f"{option}: item id {word[:40]} is out of range; item ids are 1..{INT64_MAX} (0 is padding)")
        ids.append(value)
    return ids


def _event_list(text: str, n_items: int) -> list[list[int | str]] | None:
    """--events: one kind per --session item, by name or code 0-4; None when empty. Exits with a clear error."""
    from pipelines.data.sequences import EVENT_KIND_CODES

    if not text.strip():
        return None
    kinds: list[int | str] = []
    for part in text.split(","):
        word = part.strip()
        if word.isascii() and word.isdigit() and int(word) <= len(EVENT_KIND_CODES):
            kinds.append(int(word))
        elif word in EVENT_KIND_CODES:
            kinds.append(word)
        else:
            _fail(f"--events: {word[:40]!r} is not an event kind; use {'|'.join(EVENT_KIND_CODES)} "
                  f"or a code 0-{len(EVENT_KIND_CODES)} (0 = unknown), one per --session item")
    if len(kinds) != n_items:
        _fail(f"--events has {len(kinds)} kinds but --session has {n_items} items: give one per item")
    return [kinds]


def _endpoint(url: str | None, protocol: str) -> str:
    """--url, else the profile's Triton (RXREC_TRITON_URL / RXREC_TRITON_GRPC_URL, else params.yaml serve ports)."""
    from pipelines.serve.endpoint import TritonEndpointError, resolve_triton

    if protocol not in ("http", "grpc"):
        _fail(f"--protocol must be http or grpc, got {protocol!r}")
    if url:
        return url
    try:
        return resolve_triton(load_settings().serve).url(protocol)
    except (SettingsError, TritonEndpointError) as exc:
        _fail(str(exc))


def _ask_server(call: Callable[[], object], what: str) -> object:
    """Run a client call; bad input and server rejections become one clear error line."""
    from tritonclient.utils import InferenceServerException

    from pipelines.serve.client import ServerUnavailableError

    try:
        return call()
    except ValueError as exc:
        _fail(str(exc))
    except InferenceServerException as exc:
        _fail(f"{what}: the server answered: {exc.message() if hasattr(exc, 'message') else exc}")
    except ServerUnavailableError as exc:  # its message names the server and says what to do
        _fail(f"{what}: {exc}")
    except ConnectionError as exc:
        _fail(f"{what}: no Triton server answers ({exc}); start one with `rxrec serve start`")
    return None


@app.command()
def recommend(
    session: Annotated[str, typer.Option(help="comma-separated item ids, oldest first, e.g. 12,45,7 ('' = empty)")],
    purchased: Annotated[str, typer.Option(help="comma-separated item ids already bought (never recommended; a "
                                           "purchase record lets prescription-only products of its molecules through)")] = "",
    purchased_days: Annotated[str, typer.Option(help="comma-separated days since each --purchased item was bought "
                                                "(home then offers refills of chronic medicines that are due)")] = "",
    cart: Annotated[str, typer.Option(help="comma-separated item ids in the cart now")] = "",
    prescribed: Annotated[str, typer.Option(help="comma-separated item ids the user holds a prescription for")] = "",
    placement: Annotated[str, typer.Option(help="home, product (the viewed product is the session's latest item), "
                                           "cart or search (with --query): each blends its own sources "
                                           "(params.yaml placements)")] = "home",
    query: Annotated[str, typer.Option(help="what the search placement looks for, e.g. 'metformin 500'; "
                                       "typos are tolerated")] = "",
    location: Annotated[str, typer.Option(help="delivery postcode, e.g. 110017: products that do not ship there "
                                          "are dropped")] = "",
    user: Annotated[int, typer.Option(min=0, help="the user's id (0 = anonymous): a user the champion stored a "
                                      "vector for gets their best items on home (reason code history)")] = 0,
    events: Annotated[str, typer.Option(help="comma-separated event kind per session item, e.g. "
                                        "view,add_to_cart,purchase (view|click|add_to_cart|purchase|0-4)")] = "",
    model: Annotated[str, typer.Option(help="recommend (entry point with fallbacks) or gpt4rec (raw model)")] = (
        "recommend"),
    url: Annotated[str | None, typer.Option(help="Triton endpoint host:port (default: the profile's RXREC_TRITON_URL / RXREC_TRITON_GRPC_URL, else params.yaml serve ports on 127.0.0.1)")] = None,
    protocol: Annotated[str, typer.Option(help="http or grpc")] = "http",
) -> None:
    """Ask a running Triton server for the next items of one session."""
    from pipelines.serve.client import recommend as ask_gpt4rec
    from pipelines.serve.client import recommend_session

    items, bought = _id_list(session, "--session"), _id_list(purchased, "--purchased")
    in_cart, rx = _id_list(cart, "--cart"), _id_list(prescribed, "--prescribed")
    days = [w.strip() for w in purchased_days.split(",") if w.strip()]
    if not all(w.isascii() and w.isdigit() and len(w) <= 6 for w in days):
        _fail(f"--purchased-days must be comma-separated whole days (0 = today), got {purchased_days[:60]!r}")
    days = [int(w) for w in days]
    if purchased_days and len(days) != len(bought):
        _fail(f"--purchased-days gives {len(days)} ages for {len(bought)} --purchased items: one per item, in order")
    kinds = _event_list(events, len(items))
    endpoint = _endpoint(url, protocol)
    if query and placement != "search":
        _fail(f"--query is read by the search placement only; add --placement search (not {placement!r})")
    if model == "recommend":
        (answer,) = _ask_server(lambda: recommend_session(
            [items], purchased=[bought] if bought else None, kinds=kinds, cart=[in_cart] if in_cart else None,
            prescribed=[rx] if rx else None, placement=placement, query=query if placement == "search" else None,
            purchased_days_ago=[days] if purchased_days else None, location=location or None, user=user or None,
            url=endpoint, protocol=protocol), model)
        ids, scores = answer.item_ids, answer.scores
        typer.echo(f"source: {answer.source}" + (f"  (dropped unknown ids {answer.unknown_ids})"
                                                 if answer.unknown_ids else ""))
        if answer.policy_removed:
            typer.echo("safety policy removed: " + ", ".join(f"{n} {reason}" for reason, n in answer.policy_removed.items()))
        if answer.short_reason:
            typer.echo(f"short list: {answer.short_reason}")
    else:
        if protocol != "http" or bought or in_cart or rx or placement != "home" or query or days or location or user:
            _fail("--model gpt4rec is the raw model, asked over HTTP without --purchased, --cart, --prescribed, "
                  "--placement, --query, --location or --user and without the safety policy; use the recommend entry "
                  "point for those")
        ((ids, scores),) = _ask_server(lambda: ask_gpt4rec([items], url=endpoint, model_name=model, kinds=kinds),
                                       model)
    why = answer.reasons if model == "recommend" else []
    for rank, (item, score) in enumerate(zip(ids, scores), 1):
        if item >= 0:
            reason = f"  [{answer.reason_codes[rank - 1]}] {why[rank - 1]}" if rank <= len(why) else ""
            typer.echo(f"{rank:>3}. item {item}  score {score:.4f}{reason}")


@app.command()
def similar(
    item: Annotated[int, typer.Option(min=1, help="item id whose similar products to list (>= 1)")],
    url: Annotated[str | None, typer.Option(help="Triton endpoint host:port (default: the profile's RXREC_TRITON_URL / RXREC_TRITON_GRPC_URL, else params.yaml serve ports on 127.0.0.1)")] = None,
    protocol: Annotated[str, typer.Option(help="http or grpc")] = "http",
) -> None:
    """Ask a running Triton server for the products most similar to one item."""
    from pipelines.serve.client import similar_items

    endpoint = _endpoint(url, protocol)
    ((ids, scores),) = _ask_server(lambda: similar_items([item], url=endpoint, protocol=protocol), "similar_items")
    for rank, (other, score) in enumerate(zip(ids, scores), 1):
        typer.echo(f"{rank:>3}. item {other}  cosine {score:.4f}")


serve = typer.Typer(no_args_is_help=True, help="The local Triton server in the background (params.yaml serve ports).")
app.add_typer(serve, name="serve")


@serve.command("start")
def serve_start(set_: SetOption = None) -> None:
    """Start tritonserver on 127.0.0.1 and load every model of triton_repo/ (dependencies first)."""
    from pipelines.serve.daemon import start_background
    from pipelines.serve.triton_server import TritonError

    try:
        info = start_background(load_settings(overrides=set_ or []), Paths())
    except SettingsError as exc:
        _fail(str(exc))
    except TritonError as exc:
        _fail(str(exc))
    if info.get("recovered"):
        typer.echo(f"previous tritonserver pid {info['recovered']['stale_pid']} had died "
                   f"({info['recovered']['reason']}); cleaned up and restarting")
    for problem in info.get("repo_problems", []):
        typer.secho(f"warning: {problem}", fg=typer.colors.YELLOW, err=True)
    verb = "already running, models reloaded" if info["reused"] else "started"
    typer.echo(f"tritonserver {verb}: pid {info['pid']}, HTTP 127.0.0.1:{info['http_port']}, "
               f"gRPC 127.0.0.1:{info['grpc_port']}, metrics 127.0.0.1:{info['metrics_port']}")
    typer.echo(f"models: {', '.join(info['models'])}   log: {info['log']}   stop: rxrec serve stop")


@serve.command("stop")
def serve_stop() -> None:
    """Stop the background tritonserver (SIGTERM, then SIGKILL after 30 s)."""
    from pipelines.serve.daemon import stop_background

    result = stop_background(Paths())
    typer.echo(f"stopped tritonserver pid {result['pid']}" if result["stopped"] else result["reason"])


@serve.command("status")
def serve_status(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Whether the background tritonserver runs, and the state of each model."""
    from pipelines.serve.daemon import server_status

    status = server_status(Paths())
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    elif not status["running"]:
        typer.echo(f"not running: {status['reason']}")
    else:
        typer.echo(f"running: pid {status['pid']}, HTTP 127.0.0.1:{status['http_port']}, "
                   f"gRPC 127.0.0.1:{status['grpc_port']}, metrics 127.0.0.1:{status['metrics_port']}")
        for m in status["models"]:
            reason = f"  ({m['reason']})" if m.get("reason") else ""
            typer.echo(f"  {m['name']:<16} v{m.get('version', '?'):<4} {m.get('state', '?')}{reason}")
    if not status["running"]:
        raise typer.Exit(code=3)


@serve.command("check")
def serve_check_repo(
    quarantine: Annotated[bool, typer.Option("--quarantine", help="rename broken version folders aside "
                                             "(.quarantine-N-<time>, never deleted) so Triton never loads them")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check triton_repo/: every version folder complete and matching its lineage.json checksums (exit 1 if not)."""
    from pipelines.repository.check import check_repository
    from pipelines.repository.check import quarantine as move_aside

    check = check_repository(Paths().triton_repo)
    moved = move_aside(check) if quarantine else []
    typer.echo(json.dumps({**check.as_dict(), "quarantined": moved}, indent=2) if as_json else check.summary())
    for path in moved:
        typer.echo(f"quarantined: {path}")
    if not check.ok and not (quarantine and check_repository(Paths().triton_repo).ok):
        raise typer.Exit(code=1)


@serve.command("rollback")
def serve_rollback(
    model: Annotated[str, typer.Option(help="model folder of triton_repo/ to roll back")] = "gpt4rec",
    to: Annotated[int | None, typer.Option("--to", help="version to serve again (default: the newest earlier "
                                           "intact version that differs)")] = None,
    reason: Annotated[str, typer.Option(help="why, kept in the new folder's lineage.json")] = "",
    set_: SetOption = None,
) -> None:
    """Serve an earlier Triton version again: its files go to a new version folder, a running server loads it.

    No folder is overwritten. The registry is not changed: follow with `rxrec promote --rollback` so the
    next deploy does not bring the rolled-back model back. When recommend scores with its own copy of the
    model rolled back (serve.recommend_scoring: in_process), its version holding the restored model is served
    again too.
    """
    from pipelines.repository.check import rollback as roll_back
    from pipelines.repository.check import scorer_pairing
    from pipelines.serve.daemon import load_in_running_server

    settings, paths = load_settings(overrides=set_ or []), Paths()
    try:
        paired = scorer_pairing(paths.triton_repo, model, to)
        done = [roll_back(paths.triton_repo, model, to_version=to, reason=reason)]
        if paired is not None:
            done.append(roll_back(paths.triton_repo, paired[0], to_version=paired[1],
                                  reason=f"scores with the rolled-back {model}'s model: {reason}".rstrip(": ")))
    except ValueError as exc:
        _fail(str(exc))
    for step in done:
        typer.echo(f"{step['model']}: version {step['rolled_back']} rolled back; version {step['restored_from']} "
                   f"copied to new version {step['new_version']} ({step['path']})")
    models = [step["model"] for step in done]
    loaded, errors = load_in_running_server(settings.serve.http_port, models, changed=models,
                                            timeout_s=settings.serve.startup_timeout_s)
    if errors:
        _fail(f"the running Triton could not load {sorted(errors)} (the previous versions keep serving): {errors}")
    typer.echo("loaded into the running Triton" if loaded else "no Triton running: `rxrec serve start` serves it")


@app.command()
def promote(
    version: Annotated[str | None, typer.Option("--version", help="make this registered version (or alias, e.g. "
                                                "challenger) the champion; needs --reason")] = None,
    reason: Annotated[str, typer.Option("--reason", help="why, for a manual promotion (kept as a version tag "
                                        "and in the champion moves)")] = "",
    rollback: Annotated[bool, typer.Option("--rollback", help="move `champion` back to the previous champion")] = False,
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy", help="redeploy the champion to Triton")] = True,
    set_: SetOption = None,
) -> None:
    """Move the registry's `champion` by hand (--version N --reason "...") or back (--rollback), and redeploy it.

    The register stage's gate promotes on its own; this is the manual control beside it. An unknown
    version or alias changes nothing.
    """
    if rollback == (version is not None):
        _fail("say what to do: `rxrec promote --version N --reason \"...\"` or `rxrec promote --rollback`")
    if version is not None and not reason.strip():
        _fail("a manual promotion needs --reason \"...\" (kept as a version tag and in the champion moves)")
    from pipelines.promotion.aliases import RollbackError, UnknownVersion, promote_manually
    from pipelines.promotion.aliases import rollback as roll_back
    from pipelines.track.service import MlflowService

    try:
        settings = load_settings(overrides=set_ or [])
    except SettingsError as exc:
        _fail(str(exc))
    paths = Paths()
    name = settings.mlflow.registered_model
    registry = MlflowService.from_settings(settings, paths)
    try:
        old, new = roll_back(registry, name) if rollback else promote_manually(registry, name, version or "", reason)
    except (RollbackError, UnknownVersion) as exc:
        _fail(str(exc))
    if old == new:
        typer.echo(f"v{new} of {name} is already the champion: nothing changed  ({paths.tracking_uri(settings)})")
        return
    typer.echo(f"champion of {name}: {f'v{old}' if old else '(none)'} → v{new}  ({paths.tracking_uri(settings)})")
    if deploy:
        _run("deploy", set_ or [])


@app.command()
def lineage(
    model: Annotated[str, typer.Argument(help="MODEL@ALIAS or MODEL/VERSION, e.g. gpt4rec@champion")],
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print where a model version comes from: MLflow runs, git commit, DVC data hash, dataset, DAG run."""
    from pipelines.track.service import MlflowService

    try:
        settings = load_settings(overrides=set_ or [])
    except SettingsError as exc:
        _fail(str(exc))
    paths = Paths()
    service = MlflowService.from_settings(settings, paths)
    try:
        chain = service.lineage(model)
    except (KeyError, ValueError) as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - MLflow's not-found errors, shown plainly
        _fail(f"{model}: {exc}")
    served = []
    repo = paths.triton_repo / settings.serve.model_name
    for lineage_file in sorted(repo.glob("[0-9]*/lineage.json")):
        meta = json.loads(lineage_file.read_text()).get("metadata", {})
        if meta.get("registered_model") == chain["model"] and str(meta.get("model_version")) == chain["version"]:
            served.append(str(lineage_file.parent))
    chain["triton_versions"] = served
    if as_json:
        typer.echo(json.dumps(chain, indent=2))
        return
    rows = [
        ("model version", f"{chain['model']} v{chain['version']}  aliases: {', '.join(chain['aliases']) or '—'}"),
        ("Triton folder", ", ".join(served) or "not deployed here"),
        ("MLflow run", f"{chain['mlflow_run_id']} ({chain['mlflow_run_name']}), experiment {chain['experiment_id']}"),
        ("pipeline run", f"{chain['parent_run_id'] or '—'} ({chain['parent_run_name'] or '—'})"),
        ("Airflow dag run", chain["airflow_dag_run_id"] or "— (not run by Airflow)"),
        ("git commit", chain["git_commit"] or "—"),
        ("DVC data hash", f"{chain['data_dvc_md5'] or '— (not run by DVC)'}  content md5 {chain['data_content_md5']}"),
        ("dataset", chain["dataset"] or "—"),
        ("gate decision", chain["gate_decision"] or "—"),
        ("tracking URI", service.tracking_uri),
    ]
    for label, value in rows:
        typer.echo(f"{label:<16} {value}")


@app.command()
def reproduce(
    model: Annotated[str, typer.Argument(help="MODEL@ALIAS or MODEL/N, e.g. gpt4rec@champion "
                                         "(or MODEL --version N)")],
    version: Annotated[str | None, typer.Option("--version", help="registered version number of MODEL")] = None,
    tolerance: Annotated[float | None, typer.Option(min=0.0, help="largest absolute difference allowed between "
                                                    "logged and re-run validation metrics (default 1e-6)")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="keep the workspace (git worktree, DVC cache, MLflow "
                                       "store)")] = False,
    project: Annotated[Path | None, typer.Option(help="git+DVC repository holding the version's commit "
                                                 "(default: this checkout)")] = None,
    set_: SetOption = None,
) -> None:
    """Rebuild a registered version from its lineage (commit + dvc.lock) and check that it reproduces.

    Restores the run's data from the DVC remote into a fresh git worktree, verifies every file against
    the lock, re-runs the stages up to the model's training (forced), and compares data hashes (exact)
    and validation metrics (within --tolerance). Exit 0: reproduced; 1: something differs (see the
    table and var/reproduce/<model>-v<N>.json); 2: bad input or a remote that is down (nothing changed).
    """
    from pipelines.core.retry import ServiceUnavailable
    from pipelines.stages.reproduce import DEFAULT_TOLERANCE, ReproduceError, parse_target, reproduce_version

    try:
        name, ref = parse_target(model, version)
        settings = load_settings(overrides=set_ or [])
        report = reproduce_version(settings, Paths(), name, ref, project=project or PROJECT_ROOT,
                                   tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance, keep=keep,
                                   progress=lambda line: typer.secho(f"▶ {line}", bold=True))
    except (ReproduceError, SettingsError, ServiceUnavailable) as exc:
        typer.secho(f"error: {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(report.table())
    typer.echo(f"report: {report.path}" + (f"   workspace kept: {report.workspace}" if keep else ""))
    if not report.passed:
        raise typer.Exit(code=1)


@app.command(name="export")
def export_(
    profile: Annotated[str, typer.Option(help="cpu: the Python-backend repository (what deploy writes); "
                                         "gpu: configs for Triton's GPU containers")],
    out: Annotated[Path | None, typer.Option(help="model repository to write (default: triton_repo/ for cpu, "
                                             "params.yaml gpu.repository for gpu)")] = None,
    variant: Annotated[str | None, typer.Option(help="gpu only: tensorrt_plan (engine built on the GPU node) or "
                                                "onnxruntime_trt (no build); default params.yaml gpu.variant")] = None,
    onnx: Annotated[Path | None, typer.Option(help="export this ONNX file instead of the registry's champion")] = None,
    set_: SetOption = None,
) -> None:
    """Write a serving profile of the champion (or --onnx) into a Triton model repository."""
    from pipelines.gpu.deploy import export_profile
    from pipelines.gpu.profile import VARIANTS

    if profile not in ("cpu", "gpu"):
        _fail(f"--profile must be cpu or gpu, got {profile!r}")
    if variant is not None and (profile != "gpu" or variant not in VARIANTS):
        _fail(f"--variant applies to --profile gpu and is one of {', '.join(VARIANTS)}; got {variant!r}")
    try:
        summary = export_profile(load_settings(overrides=set_ or []), Paths(), profile=profile, out=out, onnx=onnx,
                                 variant=variant)
    except (SettingsError, ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))
    if summary.get("pending_plans"):
        typer.echo("model.plan is built on the GPU node: infra/k8s/tensorrt-build-job.yaml (docs/gpu.md)")


data_app = typer.Typer(no_args_is_help=True, help="DVC-tracked data: push to a remote with retries.")
app.add_typer(data_app, name="data")


@data_app.command("push")
def data_push(
    remote: Annotated[str, typer.Option("--remote", "-r", help="DVC remote name in .dvc/config, e.g. s3 or local")],
    set_: SetOption = None,
) -> None:
    """`dvc push -r REMOTE` retried with backoff (params.yaml service_retries); a clear error if it never works."""
    from pipelines.core.retry import RetryPolicy, ServiceUnavailable
    from pipelines.data.remote import push

    try:
        policy = RetryPolicy.from_settings(load_settings(overrides=set_ or []).service_retries)
        result = push(remote, repo=Paths().root, policy=policy)
    except (SettingsError, ValueError, RuntimeError, ServiceUnavailable) as exc:
        _fail(str(exc))
    typer.echo(f"pushed to {result.remote} ({result.url}) in {result.attempts} attempt(s), {result.elapsed_s} s")


def _bench_started() -> None:
    """Every benchmark records the code it starts on (benchmarks.common.capture_start)."""
    __import__("benchmarks.common", fromlist=["capture_start"]).capture_start()


bench = typer.Typer(no_args_is_help=True, callback=_bench_started,
                    help="Quality and speed benchmarks (JSON + markdown under reports/).")
app.add_typer(bench, name="bench")
# Benchmark commands live in benchmarks/<name>.py and are registered on `bench` there:
# each module defines `register(bench: typer.Typer)`; list them here.
BENCHMARK_MODULES: tuple[str, ...] = ("data", "quality", "refit", "placements", "embeddings", "walks", "serve", "soak",
                                      "scale", "reliability", "readme")
for _module in BENCHMARK_MODULES:
    __import__(f"benchmarks.{_module}", fromlist=["register"]).register(bench)


if __name__ == "__main__":
    app()
