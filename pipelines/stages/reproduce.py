"""Reproduce a registered model version from its lineage: `rxrec reproduce gpt4rec@champion`.

The register stage logs what a version was made from on the version's MLflow run (`lineage/`: the run's
dvc.lock, its params, the code commit; pipelines/track/lineage.py). From that, `reproduce`:

1. creates a fresh workspace: a git worktree of the commit under `<state>/var/reproduce/<model>-v<N>/`
   (a RunWorkspace with a private, empty DVC cache: every object comes from the remote, no run-cache),
   holding the recorded dvc.lock and params;
2. restores the outputs of every stage up to the model's training stage from the DVC remote
   (RXREC_DVC_REMOTE, else .dvc/config's default) and verifies every restored file against the lock
   itself: DVC trusts a remote object's name (`verify` is off by default), so a tampered object would
   otherwise be used silently. A mismatch stops here, naming the file and both hashes;
3. re-runs those stages with `dvc repro --force --single-item`, except the source stage (`generate`):
   its output is the data the run ingested, restored as it was (a real dataset need not be at hand);
4. compares: every data output (`data/...`) must have the recorded md5 exactly; artifact outputs
   (embeddings, the model) are reported with the files that differ, not required to match (they record
   wall-clock timings, and threaded CPU kernels round weights differently in the last bits); the
   model's validation metrics must be within `tolerance` of the version's logged ones; the code deps at
   the commit must have the lock's hashes (a run from uncommitted code cannot be rebuilt from its commit).

Tolerance: 1e-6 absolute by default (integers such as best_epoch: exact). Measured on CPU, tiny world,
fixed seeds: two trainings on the same data give identical validation HR/NDCG and final losses within
1e-7 while the weights differ in the last bits. One user ranked differently moves a metric by at least
1/n_users (8e-5 with 12,000 users), so 1e-6 means "the same rankings"; GPU training needs a looser one.

Bad input (an unknown model, version or alias, a lineage without a lock, a commit the repository lacks,
a remote that is down or lacks objects) raises ReproduceError, one line; the workspace is removed and
the registry is only read. The workspace is removed after the run too, unless `keep`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import PROJECT_ROOT, Paths, Settings
from pipelines.core.files import file_md5, write_json_atomic
from pipelines.promotion.aliases import UnknownVersion, resolve
from pipelines.stages.dvc_run import (
    DvcRunError,
    RunWorkspace,
    commit_in,
    configure_dvc,
    dvc_executable,
    remove_workspace,
    run_command,
    safe_name,
    uncached_outs,
)
from pipelines.track import lineage
from pipelines.track.live import dvc_remote_url
from pipelines.track.service import FAMILY_TAG, MlflowService

DEFAULT_TOLERANCE = 1e-6
DATA_PREFIX = "data/"  # outputs that are data: reproduced byte for byte, or the reproduction fails
COMPARED_PREFIXES = (
    "valid_",
    "best_valid_",
)  # the model's validation metrics, per epoch and at the kept epoch
COMPARED_EXTRA = ("loss",)  # the last epoch's training loss: a sensitive determinism probe
EXACT_METRICS = ("best_epoch", "epochs_run")
REPRO_TIMEOUT_S = 6 * 3600  # one stage: a full-size training on CPU takes a while
Progress = Callable[[str], None]


class ReproduceError(RuntimeError):
    """The version cannot be reproduced as asked (bad input, no lineage, remote down): one line, no change."""


# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class LockedStage:
    """One stage of a dvc.lock: md5 per dep and out path, and the params.yaml values it recorded."""

    name: str
    deps: dict[str, str]
    outs: dict[str, str]
    params: dict[str, Any]


def parse_lock(text: str, where: str) -> dict[str, LockedStage]:
    """The stages of a dvc.lock (DVC 3: md5 hashes), in the lock's order; ReproduceError naming `where`."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReproduceError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise ReproduceError(f"{where} records no stages")
    parsed: dict[str, LockedStage] = {}
    for name, entry in stages.items():
        hashes: dict[str, dict[str, str]] = {}
        for kind in ("deps", "outs"):
            hashes[kind] = {}
            for item in entry.get(kind) or []:
                if item.get("hash", "md5") != "md5" or "md5" not in item:
                    raise ReproduceError(f"{where}: {item.get('path')} of stage {name} has no DVC 3 md5 hash")
                hashes[kind][str(item["path"])] = str(item["md5"])
        parsed[str(name)] = LockedStage(
            str(name),
            hashes["deps"],
            hashes["outs"],
            dict((entry.get("params") or {}).get("params.yaml") or {}),
        )
    return parsed


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def upstream(stages: dict[str, LockedStage], name: str) -> list[str]:
    """The stages whose outputs `name` reads directly."""
    return [
        other
        for other, s in stages.items()
        if other != name and any(_overlaps(dep, out) for dep in stages[name].deps for out in s.outs)
    ]


def stages_up_to(stages: dict[str, LockedStage], target: str) -> list[str]:
    """`target` and every stage it needs, directly or not, each after the stages it reads from."""
    needed: set[str] = set()
    frontier = [target]
    while frontier:
        name = frontier.pop()
        if name not in needed:
            needed.add(name)
            frontier += upstream(stages, name)
    ordered: list[str] = []
    while len(ordered) < len(needed):
        ready = [
            n
            for n in stages
            if n in needed and n not in ordered and all(u in ordered for u in upstream(stages, n))
        ]
        if not ready:
            raise ReproduceError(
                f"the stages {sorted(needed - set(ordered))} of the lock depend on each other in a cycle"
            )
        ordered.append(ready[0])
    return ordered


def params_conflicts(stages: list[LockedStage], params: dict[str, dict[str, Any]]) -> list[str]:
    """Values the lock recorded that the run's logged params contradict (the lock is not this run's then)."""
    conflicts = []
    for stage in stages:
        for section, values in stage.params.items():
            recorded = values if isinstance(values, dict) else {section.split(".", 1)[-1]: values}
            section = section.split(".", 1)[0]
            for key, value in recorded.items():
                used = (params.get(section) or {}).get(key)
                if used != value:
                    conflicts.append(f"{section}.{key} (lock: {value!r}, run: {used!r})")
    return sorted(set(conflicts))


# --------------------------------------------------------------------------- hashes, as DVC computes them


def dir_entries(folder: Path) -> list[dict[str, str]]:
    """A folder's listing as DVC stores it in a `.dir` object: md5 and relative path per file, by path."""
    entries = [
        {"md5": file_md5(p), "relpath": p.relative_to(folder).as_posix()}
        for p in folder.rglob("*")
        if p.is_file()
    ]
    return sorted(entries, key=lambda e: e["relpath"])


def entries_md5(entries: list[dict[str, str]]) -> str:
    """DVC 3's hash of a folder: md5 of its listing as sorted-key JSON, with `.dir`."""
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def out_md5(path: Path) -> str:
    """The md5 DVC records for a file or folder; '' when it does not exist."""
    if path.is_dir():
        return entries_md5(dir_entries(path))
    return file_md5(path) if path.is_file() else ""


@dataclass(frozen=True)
class FileDiff:
    """One file whose bytes are not the recorded ones ('' = missing on that side)."""

    path: str
    recorded: str
    found: str


def file_diffs(out: str, recorded: list[dict[str, str]], found: list[dict[str, str]]) -> list[FileDiff]:
    """Per file of a folder output: recorded md5 vs the md5 found, for every file that differs."""
    before = {e["relpath"]: e["md5"] for e in recorded}
    after = {e["relpath"]: e["md5"] for e in found}
    return [
        FileDiff(f"{out}/{rel}", before.get(rel, ""), after.get(rel, ""))
        for rel in sorted(before.keys() | after.keys())
        if before.get(rel) != after.get(rel)
    ]


def recorded_listing(cache: Path, md5: str) -> list[dict[str, str]] | None:
    """The `.dir` listing the lock's hash names, from the cache, when its bytes still have that hash."""
    stored = cache / "files" / "md5" / md5[:2] / md5[2:]
    if not stored.is_file():
        return None
    raw = stored.read_bytes()
    if hashlib.md5(raw).hexdigest() != md5.removesuffix(".dir"):
        return None
    return [{"md5": e["md5"], "relpath": e["relpath"]} for e in json.loads(raw)]


@dataclass
class OutCheck:
    """An output (or code dep) of a stage: the recorded md5 and the one found, with the files that differ."""

    stage: str
    path: str
    kind: str  # data | artifact | code | lineage
    recorded: str
    found: str
    files: list[FileDiff] = field(default_factory=list)
    required: bool = True  # False: reported only (a re-run artifact that records timings)

    @property
    def match(self) -> bool:
        return self.recorded == self.found


def check_out(
    root: Path, cache: Path, stage: str, path: str, recorded: str, kind: str, required: bool = True
) -> OutCheck:
    """Hash `path` under `root` and, when it differs from `recorded`, say which files differ.

    A folder's recorded listing comes from the cache object the lock names, used only when its own
    bytes have the lock's hash (else the listing itself was altered, and that is the difference shown).
    """
    found = out_md5(root / path)
    check = OutCheck(stage, path, kind, recorded, found, required=required)
    if check.match:
        return check
    if not recorded.endswith(".dir"):
        check.files = [FileDiff(path, recorded, found)]
        return check
    listing = recorded_listing(cache, recorded)
    if listing is None:
        stored = cache / "files" / "md5" / recorded[:2] / recorded[2:]
        check.files = [
            FileDiff(
                f"{path} (folder listing {stored.name})",
                recorded.removesuffix(".dir"),
                file_md5(stored) if stored.is_file() else "",
            )
        ]
    else:
        check.files = file_diffs(path, listing, dir_entries(root / path) if (root / path).is_dir() else [])
    return check


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricCheck:
    name: str
    recorded: float
    reproduced: float | None
    tolerance: float

    @property
    def diff(self) -> float | None:
        return None if self.reproduced is None else abs(self.reproduced - self.recorded)

    @property
    def ok(self) -> bool:
        return self.diff is not None and self.diff <= self.tolerance


def compare_metrics(
    recorded: dict[str, float], reproduced: dict[str, float], tolerance: float
) -> list[MetricCheck]:
    """The validation metrics (and last loss, kept epoch) of the version's run against the re-run's."""
    names = sorted(
        n for n in recorded if n.startswith(COMPARED_PREFIXES) or n in (*COMPARED_EXTRA, *EXACT_METRICS)
    )
    return [
        MetricCheck(
            n,
            float(recorded[n]),
            None if reproduced.get(n) is None else float(reproduced[n]),
            0.0 if n in EXACT_METRICS else tolerance,
        )
        for n in names
    ]


# --------------------------------------------------------------------------- the version's lineage


@dataclass(frozen=True)
class VersionLineage:
    """A registered version and what its run logged to rebuild it."""

    model: str
    version: str
    requested: str
    run_id: str
    lock: str
    params: dict[str, dict[str, Any]]
    facts: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    family: str

    @property
    def where(self) -> str:
        return f"{self.model} v{self.version} (MLflow run {self.run_id})"


def parse_target(text: str, version: str | None) -> tuple[str, str]:
    """(model, alias or version) from MODEL@ALIAS, MODEL/N, or MODEL with --version N."""
    text, version = text.strip(), (version or "").strip()
    model, sep, ref = text.partition("@") if "@" in text else text.partition("/")
    if sep and version:
        raise ReproduceError(
            f"{text!r} already names a version: drop --version {version}, or give MODEL --version N"
        )
    ref = ref if sep else version
    if not model or not ref:
        raise ReproduceError(
            f"{text!r}: say which version, as MODEL@ALIAS (e.g. gpt4rec@champion) or MODEL --version N"
        )
    return model, ref


def fetch_lineage(service: MlflowService, model: str, ref: str) -> VersionLineage:
    """Version `ref` (alias or number) of `model` and its lineage artifact; ReproduceError if either is missing."""
    from mlflow.exceptions import MlflowException

    try:
        service.client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = sorted(m.name for m in service.client.search_registered_models())
        raise ReproduceError(
            f"there is no registered model {model!r} in {service.tracking_uri} (registered: "
            f"{', '.join(known) or 'none'})"
        ) from None
    try:
        version = resolve(service, model, ref)
    except UnknownVersion as exc:
        raise ReproduceError(str(exc)) from exc
    found = service.get_version(model, version)
    run = service.client.get_run(found.run_id)
    where = f"{model} v{version} (MLflow run {found.run_id} in {service.tracking_uri})"
    logged = {a.path for a in service.client.list_artifacts(found.run_id, lineage.LINEAGE_ARTIFACT)}
    if f"{lineage.LINEAGE_ARTIFACT}/{lineage.LOCK_FILE}" not in logged:
        raise ReproduceError(
            f"{where} has no {lineage.LINEAGE_ARTIFACT}/{lineage.LOCK_FILE} artifact: it was "
            "not trained under DVC (`make demo`, an Airflow run) or was registered before "
            "lineage was recorded, so there is no lock to reproduce it from"
        )
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # three small files: no bar in the output
    with tempfile.TemporaryDirectory(prefix="rxrec-lineage-") as tmp:
        folder = Path(service.client.download_artifacts(found.run_id, lineage.LINEAGE_ARTIFACT, tmp))
        lock = (folder / lineage.LOCK_FILE).read_text()
        params_file, facts_file = folder / lineage.PARAMS_FILE, folder / lineage.FACTS_FILE
        params = yaml.safe_load(params_file.read_text()) if params_file.exists() else {}
        facts = json.loads(facts_file.read_text()) if facts_file.exists() else {}
    family = run.data.tags.get(FAMILY_TAG) or model
    return VersionLineage(
        model,
        version,
        ref,
        found.run_id,
        lock,
        params or {},
        facts,
        dict(run.data.metrics),
        dict(found.tags),
        family,
    )


def resolve_commit(project: Path, source: VersionLineage) -> str:
    """The recorded code commit, as present in `project`'s repository."""
    commit = str(source.facts.get("git_commit") or source.tags.get("git_commit", "")).removesuffix("-dirty")
    if not commit or commit == "unknown":
        raise ReproduceError(f"{source.where} recorded no git commit: its code cannot be checked out")
    found = commit_in(project, commit)
    if found is None:
        raise ReproduceError(
            f"commit {commit} of {source.where} is not in the git repository at {project}: "
            "fetch it (or run from the checkout the model was trained in, --project)"
        )
    return found


# --------------------------------------------------------------------------- the workspace


@dataclass(frozen=True)
class ReproduceWorkspace(RunWorkspace):
    """A run workspace under var/reproduce/<model>-v<N>/ with its own DVC cache and MLflow store.

    The empty cache makes every object come from the remote (and leaves no run-cache to skip a stage);
    the private store keeps the re-run's training runs out of the experiment people compare.
    """

    @property
    def folder(self) -> Path:
        return self.state_root / "var" / "reproduce" / safe_name(self.run_id)

    @property
    def path(self) -> Path:
        return self.folder / "workspace"

    @property
    def cache_dir(self) -> Path:
        return self.folder / "dvc-cache"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(RXREC_MLFLOW_TRACKING_URI=self.tracking_uri, RXREC_RUN_ID=self.run_id, COLUMNS="1000")
        # An S3 remote that is down is reported in seconds, not after minutes of botocore and s3fs retries
        # (as pipelines/data/remote.py's push); set AWS_MAX_ATTEMPTS for a flaky link.
        env.setdefault("AWS_MAX_ATTEMPTS", "1")
        for shared in (
            "RXREC_DATA_DOCS_DIR",
            "AIRFLOW_CTX_DAG_RUN_ID",
        ):  # Data Docs and run keys stay private
            env.pop(shared, None)
        return env


def create_workspace(ws: ReproduceWorkspace, commit: str, source: VersionLineage) -> None:
    """A git worktree of the commit with the recorded lock and params (the re-run logs to the private store)."""
    remove(ws)  # a workspace kept by an earlier --keep
    ws.folder.mkdir(parents=True)
    run_command(["git", "worktree", "add", "--detach", str(ws.path), commit], ws.project)
    (ws.path / "dvc.lock").write_text(source.lock)
    params = {section: dict(values) for section, values in source.params.items()}
    params.setdefault("mlflow", {})["tracking_uri"] = ""  # a service section: no stage's lock records it
    (ws.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    configure_dvc(ws)


def remove(ws: ReproduceWorkspace) -> None:
    """The worktree (files and git's record of it), the private cache and store; var/reproduce if now empty."""
    if ws.path.exists():
        remove_workspace(ws.project, ws.path)
    shutil.rmtree(ws.folder, ignore_errors=True)
    if ws.folder.parent.is_dir() and not any(ws.folder.parent.iterdir()):
        ws.folder.parent.rmdir()


def remote_of(ws: ReproduceWorkspace) -> tuple[str, str]:
    """(name, URL) of the remote to restore from; ReproduceError when it is unknown or a missing folder."""
    name = (
        os.environ.get("RXREC_DVC_REMOTE")
        or run_command([dvc_executable(), "config", "core.remote"], ws.path).strip()
    )
    url = dvc_remote_url(ws.path)
    if not url:
        raise ReproduceError(
            f"DVC remote {name!r} is not configured in {ws.path / '.dvc' / 'config'} at the "
            "version's commit: set RXREC_DVC_REMOTE to one of its remotes"
        )
    if "://" not in url and not Path(url).is_dir():
        raise ReproduceError(
            f"DVC remote {name!r} at {url} does not exist: push the run's data there "
            f"(`rxrec data push --remote {name}`) or point RXREC_DVC_REMOTE at the remote "
            "that has it"
        )
    return name, url


def restore(ws: ReproduceWorkspace, remote: tuple[str, str], target: str) -> None:
    """`dvc fetch` the outputs of `target` and its upstream stages from the remote, then check them out."""
    name, url = remote
    try:
        run_command(
            [dvc_executable(), "fetch", "-r", name, "--with-deps", target],
            ws.path,
            ws.env(),
            timeout=REPRO_TIMEOUT_S,
        )
    except DvcRunError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-2:]
        raise ReproduceError(
            f"DVC remote {name!r} ({url}) could not give the run's data: {' | '.join(errors)}"
        ) from None
    run_command(
        [dvc_executable(), "checkout", "--with-deps", target], ws.path, ws.env(), timeout=REPRO_TIMEOUT_S
    )


def rerun(ws: ReproduceWorkspace, stage: str) -> float:
    """`dvc repro --force --single-item STAGE` in the workspace; seconds it took (DvcRunError on failure)."""
    started = time.perf_counter()
    run_command(
        [dvc_executable(), "repro", "--force", "--single-item", stage],
        ws.path,
        ws.env(),
        timeout=REPRO_TIMEOUT_S,
    )
    return round(time.perf_counter() - started, 2)


def rerun_metrics(ws: ReproduceWorkspace, experiment: str, family: str) -> dict[str, float]:
    """The metrics the re-run's training stage logged (its child run in the workspace's private store)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ws.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{FAMILY_TAG}` = '{family}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return dict(runs[0].data.metrics) if runs else {}


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What was compared and how it came out (var/reproduce/<model>-v<N>.json, the CLI's table)."""

    model: str
    version: str
    requested: str
    run_id: str
    git_commit: str
    remote: str
    workspace: str
    tolerance: float
    stages: list[str]
    rerun: dict[str, float] = field(default_factory=dict)
    code: list[OutCheck] = field(default_factory=list)
    restored: list[OutCheck] = field(default_factory=list)
    outputs: list[OutCheck] = field(default_factory=list)
    metrics: list[MetricCheck] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    kept: bool = False
    seconds: float = 0.0
    path: str = ""

    @property
    def failures(self) -> list[str]:
        """One line per thing that did not reproduce; empty when everything did."""
        lines = list(self.errors)
        for label, checks in (("code", self.code), ("restored", self.restored), ("reproduced", self.outputs)):
            for check in checks:
                if check.required and not check.match:
                    files = check.files or [FileDiff(check.path, check.recorded, check.found)]
                    lines += [
                        f"{label} {d.path}: recorded md5 {d.recorded or '(none)'}, {label} md5 "
                        f"{d.found or '(missing)'}"
                        for d in files
                    ]
        lines += [
            f"metric {m.name}: recorded {m.recorded!r}, reproduced "
            f"{'(not logged)' if m.reproduced is None else repr(m.reproduced)}, tolerance {m.tolerance:g}"
            for m in self.metrics
            if not m.ok
        ]
        if self.outputs and not self.metrics:  # every stage re-ran, but there was nothing to compare
            lines.append(f"metrics: the version's run {self.run_id} logged no validation metrics to compare")
        return lines

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("code", "restored", "outputs"):
            for check, entry in zip(getattr(self, name), data[name]):
                entry["match"] = check.match
        for metric, entry in zip(self.metrics, data["metrics"]):
            entry |= {"diff": metric.diff, "ok": metric.ok}
        return {**data, "passed": self.passed, "failures": self.failures}

    def save(self, path: Path) -> Path:
        self.path = str(path)
        write_json_atomic(path, self.to_dict())
        return path

    def table(self) -> str:
        rows = [f"{'check':<9} {'path / metric':<40} {'recorded':<37} {'found':<37} result"]
        for label, checks in (("code", self.code), ("restored", self.restored), ("output", self.outputs)):
            for c in checks:
                verdict = "match" if c.match else ("DIFFERS" if c.required else "differs (not required)")
                if not c.match and c.files:
                    verdict += (
                        ": "
                        + ", ".join(Path(d.path).name for d in c.files[:6])
                        + (" …" if len(c.files) > 6 else "")
                    )
                rows.append(
                    f"{label:<9} {c.path:<40} {c.recorded:<37} {c.found or '(missing)':<37} {verdict}"
                )
        for m in self.metrics:
            found = "(not logged)" if m.reproduced is None else f"{m.reproduced:.10g}"
            verdict = (
                f"|diff| {m.diff:.2g} <= {m.tolerance:g}" if m.ok else f"OUTSIDE tolerance {m.tolerance:g}"
            )
            rows.append(f"{'metric':<9} {m.name:<40} {m.recorded:<37.10g} {found:<37} {verdict}")
        verdict = "REPRODUCED" if self.passed else f"NOT REPRODUCED ({len(self.failures)} problem(s))"
        problems = [f"  ✗ {line}" for line in self.failures]
        return "\n".join([*rows, *problems, f"{self.model} v{self.version}: {verdict}"])


# --------------------------------------------------------------------------- the whole command


def reproduce(
    service: MlflowService,
    model: str,
    ref: str,
    *,
    project: Path = PROJECT_ROOT,
    state: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    keep: bool = False,
    progress: Progress = print,
) -> Report:
    """Rebuild version `ref` of `model` from its lineage and compare (module docstring); writes the report.

    ReproduceError (bad input, remote down) leaves nothing behind; a completed comparison returns the report,
    whose `passed` says whether everything matched.
    """
    started = time.perf_counter()
    source = fetch_lineage(service, model, ref)
    stages = parse_lock(source.lock, f"the dvc.lock of {source.where}")
    target = str(source.facts.get("model_stage") or f"train_{source.family}")
    if target not in stages:
        raise ReproduceError(
            f"the dvc.lock of {source.where} has no stage {target!r}: the model was not trained "
            "under DVC in that run"
        )
    needed = stages_up_to(stages, target)
    conflicts = params_conflicts([stages[n] for n in needed], source.params)
    if conflicts:
        raise ReproduceError(
            f"the dvc.lock of {source.where} is not the run's own (it records other params: "
            f"{', '.join(conflicts[:4])}); the run did not go through `dvc repro`"
        )
    commit = resolve_commit(project, source)
    ws = ReproduceWorkspace(run_id=f"{model}-v{source.version}", project=project, state=state)
    sources = [n for n in needed if not upstream(stages, n)]
    report = Report(
        model, source.version, ref, source.run_id, commit, "", str(ws.path), tolerance, needed, kept=keep
    )
    try:
        create_workspace(ws, commit, source)
        name, url = remote_of(ws)
        progress(f"workspace: git worktree of {commit[:12]} at {ws.path}")
        produced = {out for s in stages.values() for out in s.outs}
        report.code = [
            check_out(ws.path, ws.cache_dir, n, dep, md5, "code")
            for n in needed
            for dep, md5 in stages[n].deps.items()
            if not any(_overlaps(dep, o) for o in produced)
        ]
        report.remote = f"{name} ({url})"
        progress(f"restoring the outputs of {', '.join(needed)} from DVC remote {name!r} ({url})")
        restore(ws, (name, url), target)
    except BaseException:
        remove(ws)
        raise
    try:
        uncached = set(uncached_outs(ws.path))
        report.restored = [
            check_out(ws.path, ws.cache_dir, n, out, md5, _kind(out))
            for n in needed
            for out, md5 in stages[n].outs.items()
            if out not in uncached
        ]
        if all(c.match for c in report.restored):
            validated = ws.path / "data" / "validated"
            if source.tags.get("data_content_md5") and validated.is_dir():  # the lock's data = the version's
                report.restored.append(
                    OutCheck(
                        "register",
                        "data/validated (content md5 tag)",
                        "lineage",
                        source.tags["data_content_md5"],
                        lineage.content_hash(validated),
                    )
                )
        if not all(c.match for c in report.restored if c.required):
            progress("restored data differ from the lock: not re-running on them")
        else:
            _rerun_and_compare(
                ws, report, stages, [n for n in needed if n not in sources], source, uncached, progress
            )
    finally:
        if not keep:
            remove(ws)
    report.seconds = round(time.perf_counter() - started, 2)
    report.save(ws.folder.parent / f"{ws.folder.name}.json")
    return report


def _kind(out: str) -> str:
    return "data" if out.startswith(DATA_PREFIX) else "artifact"


def _rerun_and_compare(
    ws: ReproduceWorkspace,
    report: Report,
    stages: dict[str, LockedStage],
    rerun_stages: list[str],
    source: VersionLineage,
    uncached: set[str],
    progress: Progress,
) -> None:
    """Re-run the stages in order (forced), then compare their outputs and the model's metrics."""
    for number, stage in enumerate(rerun_stages, 1):
        progress(f"re-running {stage} ({number}/{len(rerun_stages)}, forced)")
        try:
            report.rerun[stage] = rerun(ws, stage)
        except DvcRunError as exc:
            report.errors.append(f"stage {stage} failed when re-run: {' '.join(str(exc).split())[:600]}")
            return
    report.outputs = [
        check_out(ws.path, ws.cache_dir, n, out, md5, _kind(out), required=_kind(out) == "data")
        for n in rerun_stages
        for out, md5 in stages[n].outs.items()
        if out not in uncached
    ]
    experiment = str((source.params.get("mlflow") or {}).get("experiment") or "rxrec")
    reproduced = rerun_metrics(ws, experiment, source.family)
    report.metrics = compare_metrics(source.metrics, reproduced, report.tolerance)


def open_registry(settings: Settings, paths: Paths) -> MlflowService:
    """The registry the version is in, only read; a local store that does not exist is an error (opening
    it would create an empty one)."""
    uri = paths.tracking_uri(settings)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ReproduceError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: nothing is registered there "
            "(set RXREC_MLFLOW_TRACKING_URI or mlflow.tracking_uri to the registry's store)"
        )
    return MlflowService.from_settings(settings, paths)


def reproduce_version(
    settings: Settings,
    paths: Paths,
    model: str,
    ref: str,
    *,
    project: Path = PROJECT_ROOT,
    tolerance: float = DEFAULT_TOLERANCE,
    keep: bool = False,
    progress: Progress = print,
) -> Report:
    """`reproduce` against the registry params.yaml names, with the work directory as the state folder
    (where relative DVC remotes, var/reproduce/ and its report live)."""
    return reproduce(
        open_registry(settings, paths),
        model,
        ref,
        project=project,
        state=paths.root,
        tolerance=tolerance,
        keep=keep,
        progress=progress,
    )
