"""Typed settings: `params.yaml` is the one source of configuration.

The CLI (`--set gpt4rec.epochs=2`) and a DAG run's params override it; nothing else holds
defaults. The model families type their own sections: each family module declares its section's
class and pipelines/models/families.py hands them to `Settings` (wired in pipelines/__init__.py), so
adding a family needs no edit here. `Paths` says where each stage reads and writes, relative to a work
directory (the project root by default, `RXREC_WORKDIR` to move it, which is what tests and DAG runs do).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = PROJECT_ROOT / "params.yaml"


class ParamsSection(BaseModel):
    """A params.yaml section: a key it does not declare is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DataSettings(ParamsSection):
    seed: int = 42
    n_products: int = Field(3000, ge=20)
    n_users: int = Field(12000, ge=10)
    sessions_per_user: float = Field(3.0, gt=0)
    events_per_session: float = Field(6.0, gt=0)
    n_days: int = Field(90, ge=2)
    description_share: float = Field(0.2, ge=0, le=1)
    cold_start_share: float = Field(0.1, ge=0, lt=1)
    popularity_exponent: float = Field(1.1, gt=0)
    # Where the raw tables come from: the generated world, or an adapter over real data.
    source: Literal["synthetic", "s3rec", "tables"] = "synthetic"
    dataset: str = ""  # lineage name; empty: "synthetic", else the source file's stem (e.g. "Beauty")
    s3rec_path: str = "../shared/datasets/amazon-beauty/Beauty.txt"
    s3rec_attributes: str = "../shared/datasets/amazon-beauty/Beauty_item2attributes.json"
    tables_events: str = ""
    tables_catalogue: str = ""
    tables_columns: dict[str, str] = Field(default_factory=dict)  # internal column -> source column
    tables_event_types: dict[str, str] = Field(default_factory=dict)  # source label -> internal type


class ValidateSettings(ParamsSection):
    min_products: int = Field(100, ge=1)
    min_events: int = Field(1000, ge=1)
    max_unknown_item_share: float = Field(0.0, ge=0, le=1)
    # Distribution checks against the last accepted version of the same data source.
    drift_checks: bool = True
    max_event_mix_kl: float = Field(0.05, gt=0)
    max_session_length_change: float = Field(0.3, gt=0)
    max_unknown_share_increase: float = Field(0.01, ge=0, le=1)
    max_price_median_change: float = Field(0.5, gt=0)


class GraphSettings(ParamsSection):
    window: int = Field(2, ge=1)
    walks_per_node: int = Field(10, ge=1)
    walk_length: int = Field(40, ge=2)
    popular_share: float = Field(0.5, ge=0, le=1)
    # Edge weight = 1/distance x mean event weight of the two tokens (the user's strongest event on each item).
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 1.0, "add_to_cart": 3.0, "purchase": 5.0})


class Prod2VecSettings(ParamsSection):
    dim: int = Field(64, ge=2)
    window: int = Field(5, ge=1)
    epochs: int = Field(5, ge=1)
    negative: int = Field(5, ge=1)
    min_count: int = Field(1, ge=1)
    workers: int = Field(2, ge=1)


class TfidfSettings(ParamsSection):
    max_features: int = Field(30000, ge=10)
    ngram_max: int = Field(2, ge=1, le=3)
    min_df: int = Field(1, ge=1)
    sublinear_tf: bool = True


class TextEncoderSettings(ParamsSection):
    batch_size: int = Field(64, ge=1)
    max_seq_length: int = Field(64, ge=8, le=512)  # name + meta fit; long descriptions are cut
    finetune: bool = False  # contrastive fine-tuning on co-occurring pairs of the training graph
    finetune_pairs: int = Field(2000, ge=10)
    finetune_epochs: int = Field(1, ge=1)
    finetune_lr: float = Field(2e-5, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


META_FIELD_CHOICES = Literal["therapeutic_class", "uses", "composition", "manufacturer", "form", "tags", "text"]


class MetaProd2VecSettings(ParamsSection):
    dim: int = Field(64, ge=2)
    window: int = Field(5, ge=1)
    epochs: int = Field(5, ge=1)
    negative: int = Field(5, ge=1)
    lr: float = Field(0.025, gt=0)
    sample: float = Field(1e-3, ge=0)  # frequent-item subsampling threshold, as word2vec (0 = off)
    meta_share: float = Field(0.5, gt=0, le=1)  # share of positions a walk's meta copy gives to a meta token
    meta_confidence: float = Field(1.0, gt=0, le=1)  # cosine scale of the meta part of a vector (1 = off)
    meta_prior: float = Field(0.0, ge=0)  # interactions at which a product's own vector and its meta weigh equally
    workers: int = Field(2, ge=1)
    # Meta fields whose tokens join the walks' meta copies and whose vectors embed products by their meta.
    fields: list[META_FIELD_CHOICES] = Field(
        default_factory=lambda: ["therapeutic_class", "uses", "composition", "manufacturer", "form", "tags", "text"])
    text_vocab: int = Field(2000, ge=10)  # words of name + description kept for the "text" field


class SimilarSettings(ParamsSection):
    k: int = Field(10, ge=1)
    exact_max_items: int = Field(50000, ge=1)  # above: approximate index (faiss HNSW)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=8)
    method: Literal["prod2vec", "tfidf", "text_encoder", "meta_prod2vec"] = "meta_prod2vec"


class EvaluateSettings(ParamsSection):
    k: int = Field(10, ge=1)
    mask_seen: bool = True
    # A cold-start item has at most this many training interactions (pipelines/evaluate/slices.py).
    cold_max_interactions: int = Field(5, ge=0)
    # Users ranked per split (leaderboard, validation epochs, gate): above this many, a fixed seeded sample
    # of this many (pipelines/evaluate/protocol.py user_sample); 0 = every user.
    max_users: int = Field(50_000, ge=0)


class MlflowSettings(ParamsSection):
    tracking_uri: str = ""
    experiment: str = "rxrec"
    registered_model: str = "gpt4rec"


class ExportSettings(ParamsSection):
    top_k: int = Field(10, ge=1)
    opset: int = Field(18, ge=13)
    parity_sessions: int = Field(256, ge=1)


class ServeSettings(ParamsSection):
    model_name: str = "gpt4rec"
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=1, le=65535)
    metrics_port: int = Field(8002, ge=1, le=65535)
    startup_timeout_s: float = Field(120, gt=0)
    max_batch_size: int = Field(64, ge=1)
    instance_count: int = Field(1, ge=1)
    # recommend's Python instances: one per core scoring in process (one alone is held to a core by its GIL,
    # more contend: 1, 2 and 4 served 24,530, 41,122 and 28,944 requests/min at 100k products); calling
    # gpt4rec by BLS, 3 (each blocks on its call, so one computes while another waits; reports/serve.md)
    recommend_instances: int = Field(2, ge=1)
    # how long recommend's batcher waits for a fuller batch: a batch shares one gpt4rec call and one
    # pass over the catalogue scores
    recommend_queue_delay_us: int = Field(500, ge=0)
    # how recommend gets gpt4rec's top-k: in_process runs the deployed model's own copy inside recommend (a
    # CPU node: one Python hop per request instead of two, docs/serving.md); bls calls the gpt4rec model
    # (a GPU node, where gpt4rec is a TensorRT engine)
    recommend_scoring: Literal["in_process", "bls"] = "in_process"


class PolicySettings(ParamsSection):
    """The pharmacy safety policy inside the served path (pipelines/pharmacy; docs/pharmacy.md)."""

    drop_restricted: bool = True
    drop_unavailable: bool = True  # catalogue in_stock = false
    rx_requires_record: bool = True  # prescription-only needs a purchase or prescription of its molecules
    interactions: bool = True  # nothing that interacts with a session or cart item
    duplicate_molecules_in_cart: bool = True
    interactions_table: str = ""  # CSV (docs/pharmacy.md); empty: pipelines/pharmacy/interactions.csv
    block_severities: list[Literal["major", "moderate", "minor"]] = ["major", "moderate"]
    max_cart_items: int = Field(500, ge=1)


PlacementSource = Literal["refills", "personal", "history", "complements", "substitutes", "matches", "popular"]


class PlacementsSettings(ParamsSection):
    """Which sources each placement blends, in order, with the most slots each may fill (docs/pharmacy.md)."""

    home: dict[PlacementSource, Annotated[int, Field(ge=1)]] = {"refills": 3, "personal": 10, "history": 10,
                                                               "complements": 10}
    product: dict[PlacementSource, Annotated[int, Field(ge=1)]] = {"substitutes": 4, "personal": 6}
    cart: dict[PlacementSource, Annotated[int, Field(ge=1)]] = {"complements": 6, "personal": 4}
    search: dict[PlacementSource, Annotated[int, Field(ge=1)]] = {"matches": 10, "personal": 10}

    def blends(self) -> dict[str, str]:
        """placement -> "source:slots,..." (the recommend config parameters placement_<name>)."""
        return {name: ",".join(f"{source}:{slots}" for source, slots in getattr(self, name).items())
                for name in type(self).model_fields}


class RefillSettings(ParamsSection):
    """Refills on the home page: which medicines are taken every day for good, and when a refill is offered."""

    # Therapeutic classes of chronic medicines (the catalogue's therapeutic_class, any case): a pack of N
    # tablets or capsules lasts N / doses_per_day days.
    classes: list[str] = ["antidiabetic", "antihypertensive", "lipid lowering", "thyroid"]
    doses_per_day: float = Field(1.0, gt=0)
    due_within_days: int = Field(7, ge=0)  # offered from this many days before the last pack runs out
    overdue_days: int = Field(30, ge=0)  # and until this many days after; later, the therapy is taken to have stopped


class SearchSettings(ParamsSection):
    """The search placement: how many of the query's products the personal model re-ranks, and by how much."""

    candidates: int = Field(50, ge=1)  # best text matches the re-rank reads
    personal_weight: float = Field(0.5, ge=0)  # bonus of the personal model's top pick (relevance is 0..1)
    max_query_bytes: int = Field(256, ge=16, le=4096)  # a longer query is refused


class UsersSettings(ParamsSection):
    """The served home page's stored user vectors (pipelines/models/user_vectors.py): how many of a user's best
    items are read, and from which catalogue size the exact product gives way to a faiss HNSW search."""

    candidates: int = Field(100, ge=1)  # best items per user the blend and the search re-rank read
    faiss_above_items: int = Field(50000, ge=1)  # catalogue items from which retrieval is approximate
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=8)
    # A user_id the stored vectors do not hold: refused (INVALID_ARG naming the row; the caller sends 0 for a user
    # the model has not seen, who gets the popular, safe lists) or served as that anonymous user.
    unknown: Literal["refuse", "anonymous"] = "refuse"


class GateSettings(ParamsSection):
    """The promotion gate: when a registered challenger may become `champion`."""

    promote: bool = True  # false: decide and log only, never move `champion` (a dry run)
    primary_metric: str = "ndcg_at_10"
    min_improvement: float = Field(0.0, ge=0)  # the challenger must beat the champion by more than this
    # Guard metric -> largest allowed drop (absolute) from the champion; skipped where a metric is missing.
    guard_tolerances: dict[str, float] = Field(
        default_factory=lambda: {"coverage_at_10": 0.1, "cold_start_hr_at_10": 0.02})
    require_parity: bool = True
    latency_budget_ms: float = Field(100.0, ge=0)  # p95 of one-session requests through Triton; 0: not checked
    latency_requests: int = Field(40, ge=5)
    # false: reject a challenger whose trainer's time_budget_s stopped it before its epochs or patience did
    allow_time_budget_cut: bool = True


class ServiceRetrySettings(ParamsSection):
    """Retries of calls to services (MLflow, the DVC remote): exponential backoff with jitter."""

    attempts: int = Field(4, ge=1, le=20)  # calls in all, the first included
    backoff_s: float = Field(1.0, ge=0)  # first wait; doubles after each failure (+-50% jitter)
    max_backoff_s: float = Field(30.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)  # per attempt (MLflow HTTP request, one `dvc push`)


class GpuSettings(ParamsSection):
    """The GPU serving profile: Triton's GPU containers, and the TensorRT engine built on the GPU node pool."""

    enabled: bool = False  # false: `build_tensorrt_engine` is skipped (no cluster needed)
    variant: Literal["tensorrt_plan", "onnxruntime_trt"] = "tensorrt_plan"
    repository: str = "artifacts/triton_repo_gpu"  # local GPU model repository; relative: from the work directory
    model_repository_uri: str = "s3://rxrec-models/triton_repo"  # ConfigMap rxrec-config MODEL_REPOSITORY
    max_batch_size: int = Field(64, ge=1)
    opt_batch_size: int = Field(8, ge=1)  # batch the TensorRT kernels are tuned for
    fp16: bool = True
    workspace_mib: int = Field(1024, ge=64)
    instance_count: int = Field(1, ge=1)
    max_queue_delay_us: int = Field(1000, ge=0)
    ort_trt_cache_path: str = "/tmp/rxrec-trt-cache"  # onnxruntime_trt: engine cache inside the Triton pod
    kube_context: str = ""  # empty: kubectl's current context
    namespace: str = "rxrec"
    gpu_node_label: str = "nvidia.com/gpu.product"  # node label that names the GPU type (GPU feature discovery)
    gpu_type: str = "NVIDIA-L4"  # the serving GPU type: the engine is built on the same one
    image: str = "nvcr.io/nvidia/tensorrt:24.10-py3"  # TensorRT 10.5, the release inside tritonserver:24.10 (2.51)
    job_timeout_s: float = Field(3600, gt=0)


SectionSource = Callable[[], Mapping[str, type[ParamsSection]]]
#: Packages above core that type params sections of their own (the model families: each family module
#: declares its section's class). Wired once, in pipelines/__init__.py, so core validates every section
#: without importing a package above it.
_section_sources: list[SectionSource] = []


def add_section_source(source: SectionSource) -> None:
    """Let `source()` (section name -> its class) type params sections that core does not declare."""
    if source not in _section_sources:
        _section_sources.append(source)


def _added_section_types() -> dict[str, type[ParamsSection]]:
    return {name: section for source in _section_sources for name, section in source().items()}


@functools.cache
def _params_mapping(path: Path) -> dict[str, Any]:
    """params.yaml as read, or {} where it is missing or not a mapping (load_settings reports why)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def params_file_sections(path: Path = PARAMS_FILE) -> tuple[str, ...]:
    """The section names of the project's params.yaml, in file order (which orders the model families)."""
    return tuple(str(name) for name in _params_mapping(path))


def _init_details(errors: list[Any], prefix: tuple[str, ...] = ()) -> list[Any]:
    """pydantic errors as line errors of a new ValidationError, under `prefix`."""
    return [{"type": e["type"], "loc": (*prefix, *e["loc"]), "input": e["input"],
             **({"ctx": e["ctx"]} if "ctx" in e else {})} for e in errors]


class Settings(ParamsSection):
    """Every params.yaml section, typed: core's below, the model families' by their own modules.

    A section core does not declare is kept (pydantic's extra) once its registered class has validated
    it, so `settings.gpt4rec.epochs` reads like any other key; a section nobody declares is refused.
    """

    data: DataSettings = DataSettings()
    validate_: ValidateSettings = Field(ValidateSettings(), alias="validate")
    graph: GraphSettings = GraphSettings()
    prod2vec: Prod2VecSettings = Prod2VecSettings()
    tfidf: TfidfSettings = TfidfSettings()
    text_encoder: TextEncoderSettings = TextEncoderSettings()
    meta_prod2vec: MetaProd2VecSettings = MetaProd2VecSettings()
    similar: SimilarSettings = SimilarSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    mlflow: MlflowSettings = MlflowSettings()
    export: ExportSettings = ExportSettings()
    serve: ServeSettings = ServeSettings()
    policy: PolicySettings = PolicySettings()
    placements: PlacementsSettings = PlacementsSettings()
    search: SearchSettings = SearchSettings()
    refills: RefillSettings = RefillSettings()
    users: UsersSettings = UsersSettings()
    gate: GateSettings = GateSettings()
    gpu: GpuSettings = GpuSettings()
    service_retries: ServiceRetrySettings = ServiceRetrySettings()

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="wrap")
    @classmethod
    def _added_sections(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """Core's sections by pydantic, the others by their registered class; every error at once."""
        if not isinstance(data, dict):
            return handler(data)
        core = {name for field, info in cls.model_fields.items() for name in (field, info.alias) if name}
        added = _added_section_types()
        errors: list[Any] = []
        typed: dict[str, ParamsSection] = {}
        for name, values in data.items():
            if name in core:
                continue
            if name not in added:
                errors.append({"type": "extra_forbidden", "loc": (name,), "input": values})
                continue
            try:
                typed[name] = values if isinstance(values, added[name]) else added[name].model_validate(
                    {} if values is None else values)
            except ValidationError as exc:
                errors.extend(_init_details(exc.errors(), (name,)))
        try:
            settings = handler({name: values for name, values in data.items() if name in core})
        except ValidationError as exc:
            errors = _init_details(exc.errors()) + errors
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        extra = settings.__pydantic_extra__ if settings.__pydantic_extra__ is not None else {}
        extra.update({name: typed.get(name) or section() for name, section in added.items()})
        return settings

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the shape MLflow params and DVC params use."""
        out: dict[str, Any] = {}
        for section, values in self.model_dump(by_alias=True).items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


class SettingsError(ValueError):
    """A params file or override that cannot be used; the message says what to change."""


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, YAML-parsed value)."""
    if not isinstance(text, str) or "=" not in text or "." not in text.split("=", 1)[0]:
        raise SettingsError(f"override {text!r} must look like section.key=value, e.g. gpt4rec.epochs=2")
    dotted, raw = text.split("=", 1)
    section, key = (part.strip() for part in dotted.strip().split(".", 1))
    if not section or not key:
        raise SettingsError(f"override {text!r} must name a section and a key: section.key=value, e.g. gpt4rec.epochs=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise SettingsError(f"override {section}.{key}: value {raw[:60]!r} is not a YAML value ({problem}); "
                            "check its brackets and quotes, or quote the whole value") from exc
    return section, key, value


def section_types() -> dict[str, type[ParamsSection]]:
    """params.yaml section name -> its class: core's and the added ones, in params.yaml's order."""
    core = {(info.alias or name): info.annotation for name, info in Settings.model_fields.items()}
    sections = {**core, **_added_section_types()}
    order = {name: position for position, name in enumerate(params_file_sections())}
    return dict(sorted(sections.items(), key=lambda item: order.get(item[0], len(order))))  # type: ignore[arg-type]


def _section_keys() -> dict[str, list[str]]:
    """params.yaml section name -> its keys."""
    return {name: sorted(section.model_fields) for name, section in section_types().items()}


def _bound(value: Any) -> str:
    """A bound as people write it: 0 not 0.0, 2e-05 for tiny ones."""
    return f"{value:g}" if isinstance(value, float) else str(value)


_RULES = {
    "greater_than_equal": lambda c: f"must be >= {_bound(c.get('ge'))}",
    "greater_than": lambda c: f"must be > {_bound(c.get('gt'))}",
    "less_than_equal": lambda c: f"must be <= {_bound(c.get('le'))}",
    "less_than": lambda c: f"must be < {_bound(c.get('lt'))}",
    "literal_error": lambda c: f"must be one of {c.get('expected')}",
    "int_parsing": lambda c: "must be an integer",
    "int_type": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be a whole number",
    "float_parsing": lambda c: "must be a number",
    "float_type": lambda c: "must be a number",
    "finite_number": lambda c: "must be a finite number",
    "bool_parsing": lambda c: "must be true or false",
    "bool_type": lambda c: "must be true or false",
    "string_type": lambda c: "must be a string (quote it in YAML)",
    "dict_type": lambda c: "must be a mapping of key: value",
    "list_type": lambda c: "must be a list, e.g. [a, b]",
    "model_type": lambda c: "must be a mapping of key: value",
    "model_attributes_type": lambda c: "must be a mapping of key: value",
}


def _problem(err: Any, file_name: str) -> str:
    """One pydantic error as `what is wrong, got what: where to change it`."""
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    if err["type"] == "extra_forbidden":
        sections = _section_keys()
        if len(loc) == 1:
            return f"{dotted} is not a params section; sections are: {', '.join(sorted(sections))}"
        if len(loc) == 2 and loc[0] in sections:
            return (f"{dotted} is not a setting; the keys of {loc[0]} are: {', '.join(sections[loc[0]])}: "
                    f"fix the name in {file_name} or the --set")
    rule = _RULES.get(err["type"])
    what = rule(err.get("ctx") or {}) if rule else err["msg"]
    where = f"{loc[0]}.{loc[1]}" if len(loc) >= 2 else dotted
    return f"{dotted} {what}, got {got}: change it in {file_name} or --set {where}=..."


RECIPES = "recipes"  # the params.yaml section of named override sets (not a section of Settings)


def load_settings(
    params_file: Path | None = None,
    overrides: dict[str, dict[str, Any]] | list[str] | None = None,
    recipe: str | None = None,
) -> Settings:
    """Read params.yaml, apply a named recipe of its `recipes` section, then overrides, and validate;
    errors name the offending key.

    A recipe is a set of section.key values kept in params.yaml for a purpose other than the demo's
    (for example `quality`: train each family to convergence, for leaderboards and real catalogues),
    so a benchmark's settings are versioned with the code rather than typed as `--set`s.
    """
    path = Path(params_file or os.environ.get("RXREC_PARAMS", PARAMS_FILE))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise SettingsError(f"params file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"params file {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"params file {path} must hold a mapping of sections")
    for section, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise SettingsError(f"params file {path}: section {section!r} must be a mapping of key: value, "
                                f"got {type(values).__name__} {values!r:.60}")
    merged = {str(section): dict(values or {}) for section, values in raw.items()}
    recipes = merged.pop(RECIPES, {})
    if recipe is not None:
        for section, values in _recipe(recipes, recipe, path).items():
            merged.setdefault(section, {}).update(values)
    if isinstance(overrides, list):
        parsed: dict[str, dict[str, Any]] = {}
        for text in overrides:
            section, key, value = parse_override(text)
            parsed.setdefault(section, {})[key] = value
        overrides = parsed
    if not isinstance(overrides, (dict, type(None))):
        raise SettingsError(f"overrides must be a list of section.key=value or a dict of sections, "
                            f"got {type(overrides).__name__}")
    for section, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise SettingsError(f"overrides for section {section!r} must be a mapping of key: value, "
                                f"got {type(values).__name__}")
        merged.setdefault(str(section), {}).update(values)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(_problem(err, path.name) for err in exc.errors())
        raise SettingsError(f"invalid settings from {path}: {problems}") from exc


def _recipe(recipes: dict[str, Any], name: str, path: Path) -> dict[str, dict[str, Any]]:
    """The sections of recipe `name` (a mapping of section -> key: value), or an error naming the choices."""
    if name not in recipes:
        known = ", ".join(sorted(map(str, recipes))) or "none"
        raise SettingsError(f"params file {path} has no recipe {name!r} in its {RECIPES} section (it has: {known})")
    sections = recipes[name] or {}
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise SettingsError(f"params file {path}: {RECIPES}.{name} must map sections to key: value mappings, "
                            f"e.g. gpt4rec: {{epochs: 200}}")
    return {str(section): dict(values) for section, values in sections.items()}


def recipe_names(params_file: Path | None = None) -> tuple[str, ...]:
    """The recipes params.yaml names, in file order."""
    recipes = _params_mapping(Path(params_file or os.environ.get("RXREC_PARAMS", PARAMS_FILE))).get(RECIPES)
    return tuple(map(str, recipes)) if isinstance(recipes, dict) else ()


class Paths:
    """Where every stage reads and writes. Mirrors the deps/outs in dvc.yaml."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.root = Path(workdir or os.environ.get("RXREC_WORKDIR") or PROJECT_ROOT).resolve()

    # data
    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def validated(self) -> Path:
        return self.root / "data" / "validated"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    # artifacts
    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def embeddings(self) -> Path:
        return self.artifacts / "embeddings"

    @property
    def models(self) -> Path:
        return self.artifacts / "models"

    @property
    def onnx(self) -> Path:
        return self.artifacts / "onnx"

    @property
    def reports(self) -> Path:
        return self.root / "reports" / "pipeline"

    @property
    def var(self) -> Path:
        """Local state of embedded services (MLflow SQLite + artifacts, Triton logs)."""
        return self.root / "var"

    @property
    def triton_repo(self) -> Path:
        return Path(os.environ.get("RXREC_TRITON_REPO") or self.root / "triton_repo")

    def tracking_uri(self, settings: Settings) -> str:
        """mlflow.tracking_uri, else RXREC_MLFLOW_TRACKING_URI, else the embedded SQLite store.

        Not MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() writes that variable into the process
        environment, so a later run in the same process would silently reuse an old store.
        """
        uri = settings.mlflow.tracking_uri or os.environ.get("RXREC_MLFLOW_TRACKING_URI", "")
        return uri or f"sqlite:///{self.var / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.var / "mlartifacts"
