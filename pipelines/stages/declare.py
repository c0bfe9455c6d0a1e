"""What each stage reads and writes, declared once: dvc.yaml is rendered from here and checked against it.

A declaration names the params.yaml sections a stage reads, the files and folders it reads (data and
the code it runs) and what it writes. Two guards keep the declarations honest, so `dvc repro` re-runs
exactly what a change affects:

- every stage gets a `DeclaredSettings` view: reading an undeclared params section raises
  `UndeclaredInput` (always on);
- with RXREC_STRICT_IO=1 (the test suite sets it) an audit hook checks every file the stage opens
  under the work directory's data/, artifacts/ and reports/ against its deps and outs.

`rxrec dvc-yaml --write` renders dvc.yaml; tests/stages/test_declare.py fails when it differs.
"""

from __future__ import annotations

import contextvars
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import PROJECT_ROOT, Settings, section_types
from pipelines.models.base import FitInput
from pipelines.models.families import family, family_names

DVC_YAML = PROJECT_ROOT / "dvc.yaml"
#: Folders of the work directory that hold pipeline data: only these are checked by the IO guard
#: (var/ and triton_repo/ are service state, like MLflow's store; params.yaml is read through Settings).
DATA_ROOTS = ("data", "artifacts", "reports")
#: Params sections that say where services are and how to retry them, not what a stage computes: any stage
#: may read them, and they are no DVC params (moving the MLflow server must not re-train anything).
SERVICE_SECTIONS = ("mlflow", "service_retries")


class UndeclaredInput(RuntimeError):
    """A stage read a params section or file that its declaration (and so dvc.yaml) does not list."""


@dataclass(frozen=True)
class Output:
    path: str
    kind: str = "outs"  # outs | metrics | plots
    cache: bool = True
    persist: bool = False


@dataclass(frozen=True)
class StageSpec:
    name: str
    deps: tuple[str, ...]
    params: tuple[str, ...] = ()
    outputs: tuple[Output, ...] = ()
    always_changed: bool = False
    note: str = ""

    def reads(self, relative: str) -> bool:
        """Whether `relative` (a path under the work directory) lies in a declared dep or output."""
        return any(relative == d or relative.startswith(d.rstrip("/") + "/")
                   for d in (*self.deps, *(o.path for o in self.outputs)))


def _report(name: str, kind: str = "outs") -> Output:
    return Output(f"reports/pipeline/{name}", kind=kind, cache=False)


PROMOTE_CODE = "pipelines/stages/promote.py"  # export, register, deploy and serve_check


def _train_spec(name: str) -> StageSpec:
    """train_<family>: its module, the shared base, the sequences and whatever extra input it reads."""
    extra = {FitInput.PRETRAINED: "artifacts/embeddings/prod2vec"}
    inputs = [extra[i] for i in sorted(family(name).inputs, key=str) if i in extra]
    return StageSpec(f"train_{name}",
                     deps=("data/features", *inputs, "pipelines/models/base.py", f"pipelines/models/{name}.py",
                           "pipelines/stages/train.py"),
                     params=(name, "data", "evaluate"), outputs=(Output(f"artifacts/models/{name}"),))


def declared_stages() -> tuple[StageSpec, ...]:
    """Every stage in pipeline order; the train stages follow from the model-family registry."""
    families = family_names()
    embeddings = ("prod2vec", "tfidf", "text_encoder", "meta_prod2vec")
    embed_params = {"prod2vec": ("graph", "prod2vec"), "tfidf": ("tfidf",), "text_encoder": ("text_encoder",),
                    "meta_prod2vec": ("graph", "meta_prod2vec")}
    return (
        StageSpec("generate", deps=("pipelines/data", "pipelines/stages/data.py"), params=("data",), outputs=(Output("data/raw"),)),
        StageSpec("validate", deps=("data/raw", "pipelines/validate", "pipelines/stages/data.py"), params=("validate",), outputs=(
            Output("data/validated"), Output("data/accepted_profile.json", cache=False, persist=True),
            _report("validation.md"), _report("validation.json", "metrics")),
            note="the drift reference data/accepted_profile.json is kept across runs, rewritten when data pass"),
        StageSpec("sequences", deps=("data/validated", "pipelines/data/sequences.py",
                                     "pipelines/data/item_features.py", "pipelines/data/text.py",
                                     "pipelines/stages/data.py"),
                  outputs=(Output("data/features"),)),
        *(StageSpec(name, deps=("data/features", "data/validated",
                                *(("pipelines/graph",) if "graph" in embed_params[name] else ()), "pipelines/embed",
                                "pipelines/stages/embed.py"),
                    params=(*embed_params[name], "data", "evaluate"),
                    outputs=(Output(f"artifacts/embeddings/{name}"),)) for name in embeddings),
        StageSpec("similar_products", deps=("data/features", "data/validated", *(f"artifacts/embeddings/{n}"
                                                                               for n in embeddings),
                                            "pipelines/embed", "pipelines/stages/embed.py"),
                  params=("similar", "evaluate"),
                  outputs=(Output("artifacts/similar"), _report("embeddings.json", "metrics"),
                           _report("embeddings.png", "plots"))),
        *(_train_spec(name) for name in families),
        StageSpec("evaluate", deps=("data/features", *(f"artifacts/models/{n}" for n in families),
                                    "pipelines/evaluate", "pipelines/stages/train.py"),
                  params=("evaluate",),
                  outputs=(_report("metrics.json", "metrics"), _report("metrics.png", "plots"))),
        StageSpec("export_onnx", deps=("data/features", "artifacts/models/gpt4rec", "pipelines/export/onnx.py",
                                       PROMOTE_CODE),
                  params=("export", "evaluate"),
                  outputs=(Output("artifacts/onnx/gpt4rec"), _report("parity.json", "metrics"))),
        StageSpec("register", deps=(
            "data/raw", "data/validated", "data/features", "reports/pipeline/validation.md",
            "reports/pipeline/validation.json", "reports/pipeline/metrics.json", "reports/pipeline/metrics.png",
            "reports/pipeline/parity.json", "artifacts/onnx/gpt4rec", "artifacts/embeddings/prod2vec",
            *(f"artifacts/models/{n}" for n in families), "pipelines/track", "pipelines/promotion", PROMOTE_CODE),
            # The fingerprint and the parent run's params cover every section, so every section is an input.
            params=tuple(section_types()),
            outputs=(_report("registry.json"), _report("gate.json"))),
        StageSpec("deploy", deps=(
            "reports/pipeline/registry.json", "artifacts/similar", *(f"artifacts/embeddings/{n}" for n in embeddings),
            "artifacts/models/popularity", "artifacts/models/rules", "data/features", "data/validated",
            "pipelines/repository", "pipelines/export/similar_onnx.py", "pipelines/serve", "pipelines/pharmacy",
            "pipelines/models/user_vectors.py", PROMOTE_CODE),
            params=("serve", "similar", "rules", "policy", "placements", "search", "refills", "users"),
            outputs=(_report("deploy.json"),),
            note="writes the Triton repository (serve state, RXREC_TRITON_REPO) from the registry's champion"),
        StageSpec("serve_check", deps=("reports/pipeline/deploy.json", "data/validated", "data/features", PROMOTE_CODE),
                  params=("serve", "evaluate"), outputs=(_report("serve_check.json"),), always_changed=True,
                  note="always runs: a cached graph still has to prove the server answers"),
    )


# --------------------------------------------------------------------------- dvc.yaml


class _IndentedDumper(yaml.SafeDumper):
    """Lists indented under their key, as DVC's own examples write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _entry(stage: StageSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"cmd": f"rxrec stage {stage.name}"}
    if stage.always_changed:
        entry["always_changed"] = True
    entry["deps"] = list(stage.deps)
    if stage.params:
        entry["params"] = list(stage.params)
    for kind in ("outs", "metrics", "plots"):
        items: list[Any] = []
        for out in (o for o in stage.outputs if o.kind == kind):
            options = {k: v for k, v in (("cache", out.cache), ("persist", out.persist))
                       if v != (k == "cache")}
            items.append({out.path: options} if options else out.path)
        if items:
            entry[kind] = items
    return entry


def render_dvc_yaml(stages: tuple[StageSpec, ...] | None = None) -> str:
    """dvc.yaml as it follows from the declarations (the header says where to change it)."""
    stages = stages or declared_stages()
    body = yaml.dump({"stages": {s.name: _entry(s) for s in stages}}, Dumper=_IndentedDumper, sort_keys=False,
                     default_flow_style=False, width=110)
    notes = {s.name: s.note for s in stages if s.note}
    lines = []
    for line in body.splitlines():
        match = re.fullmatch(r"  ([a-z_0-9]+):", line)
        if match and lines[-1:] != ["stages:"]:
            lines.append("")
        if match and match.group(1) in notes:
            line = f"{line}  # {notes[match.group(1)]}"
        lines.append(line)
    header = ("# Rendered from pipelines/stages/declare.py by `rxrec dvc-yaml --write`: edit the declarations,\n"
              "# not this file (tests/stages/test_declare.py fails when they differ). `dvc repro` runs it; the\n"
              "# Airflow DAG (dags/retrain_and_promote.py) is built from it.\n")
    return header + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- guards


def _section_names() -> dict[str, str]:
    """Settings attribute -> params.yaml section name (`validate_` is `validate`; a family's is its name)."""
    return {**{name: info.alias or name for name, info in Settings.model_fields.items()},
            **{name: name for name in section_types() if name not in Settings.model_fields}}


class DeclaredSettings:
    """A stage's view of Settings: its declared sections and the service sections; any other raises."""

    def __init__(self, settings: Settings, stage: StageSpec) -> None:
        self._settings = settings
        self._stage = stage

    def __getattr__(self, attribute: str) -> Any:
        section = _section_names().get(attribute)
        if section is not None and section not in self._stage.params and section not in SERVICE_SECTIONS:
            raise UndeclaredInput(
                f"stage {self._stage.name!r} reads params section {section!r}, which its declaration does not "
                f"list (pipelines/stages/declare.py; declared: {', '.join(self._stage.params) or 'none'}): add it "
                "there and run `rxrec dvc-yaml --write`")
        return getattr(self._settings, attribute)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value` of the declared sections only."""
        return {k: v for k, v in self._settings.flat().items() if k.split(".", 1)[0] in self._stage.params}


@dataclass
class _Watch:
    stage: StageSpec
    root: Path
    violations: list[str] = field(default_factory=list)


_WATCHED: contextvars.ContextVar[_Watch | None] = contextvars.ContextVar("rxrec_stage_io", default=None)
_HOOKED = False
# Staging siblings and atomic temp files name the output they become: .name.staging-<pid>, .name.x.tmp
_SCRATCH = re.compile(r"^\.(?P<name>.+?)\.(?:staging-\d+|old-\d+|[^.]+\.tmp)$")


def _declared_path(path: Path, root: Path) -> str | None:
    """The path relative to the work directory, scratch names mapped to what they become; None if not data."""
    try:
        relative = path.resolve().relative_to(root)
    except (ValueError, OSError):
        return None
    parts = [(_SCRATCH.match(p).group("name") if _SCRATCH.match(p) else p) for p in relative.parts]
    return "/".join(parts) if parts and parts[0] in DATA_ROOTS else None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    watch = _WATCHED.get()
    if watch is None or event not in ("open", "os.rename", "os.replace", "shutil.copyfile"):
        return
    paths = args[:1] if event == "open" else args[:2]
    for raw in paths:
        if isinstance(raw, int | bytes) or raw is None:
            continue
        relative = _declared_path(Path(os.fsdecode(raw)), watch.root)
        if relative is not None and not watch.stage.reads(relative):
            watch.violations.append(relative)


def strict_io() -> bool:
    return os.environ.get("RXREC_STRICT_IO", "") == "1"


class watch_io:
    """Within the block, record files of `root`'s data folders that `stage` touches without declaring them.

    On exit a non-empty record raises `UndeclaredInput` naming every such path.
    """

    def __init__(self, stage: StageSpec, root: Path) -> None:
        self.watch = _Watch(stage, root.resolve())

    def __enter__(self) -> _Watch:
        global _HOOKED
        if not _HOOKED:
            sys.addaudithook(_audit)  # audit hooks cannot be removed: one for the process, idle when unwatched
            _HOOKED = True
        self._token = _WATCHED.set(self.watch)
        return self.watch

    def __exit__(self, *exc: object) -> None:
        _WATCHED.reset(self._token)
        if self.watch.violations and exc[0] is None:
            found = sorted(set(self.watch.violations))
            raise UndeclaredInput(
                f"stage {self.watch.stage.name!r} touched {', '.join(found[:8])}{' …' if len(found) > 8 else ''}, "
                "which its declaration does not list as a dep or output (pipelines/stages/declare.py)")
