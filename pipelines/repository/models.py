"""The model repository's other models: `similar_items` and the `recommend` entry point.

Beside `gpt4rec` (pipelines/repository/versions.py) the repository holds::

    repo/similar_items/config.pbtxt
    repo/similar_items/<n>/model.onnx       item id -> top-k similar products (pipelines/export/similar_onnx.py)
    repo/similar_items/<n>/model.py         Python backend (pipelines/serve/backend/similar_items.py)
    repo/similar_items/<n>/known.npy        which ids have a vector (others are rejected)
    repo/recommend/config.pbtxt
    repo/recommend/<n>/model.py             the entry point (pipelines/serve/backend/recommend.py)
    repo/recommend/<n>/*.npy, rules.npz     fallback tables: popularity, item counts, catalogue, rules
    repo/recommend/<n>/policy.npz           the safety policy's tables (pipelines/pharmacy/tables.py)
    repo/recommend/<n>/rxrec_pharmacy.py    the safety policy, blends, reasons (a copy of pipelines/pharmacy/served.py)
    repo/recommend/<n>/placements.npz       names, prices, generics, substitutes (pipelines/pharmacy/catalogue.py)
    repo/recommend/<n>/search.npz           the search placement's word and spelling index
    repo/recommend/<n>/rxrec_search.py      its query code (a copy of pipelines/pharmacy/search.py)
    repo/recommend/<n>/users.npz            the champion's stored user vectors and item table, when its run has them
    repo/recommend/<n>/rxrec_users.py       their retrieval (a copy of pipelines/models/user_vectors.py)
    repo/recommend/<n>/gpt4rec.onnx         gpt4rec's model.onnx, when recommend scores in process (no BLS hop)
    repo/<model>/<n>/rxrec_backend.py       helpers every backend imports (pipelines/serve/backend/)

Version folders follow the same rules as gpt4rec's: assembled in a hidden temp folder and renamed
into place (complete or absent), never overwritten. Each lineage.json carries a fingerprint of the
folder's files, so a deploy writes a new folder only when what it would hold changed.
Pure functions of the filesystem and numpy; no Triton import. Data files are .npy/.npz without
pickle, so the backends load them with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipelines.core.config import PlacementsSettings, UsersSettings
from pipelines.core.files import atomic_write_text
from pipelines.models import user_vectors
from pipelines.models.user_vectors import USERS_FILE, UserVectors
from pipelines.pharmacy import search, served
from pipelines.pharmacy.search import MAX_QUERY_BYTES, SEARCH_FILE, SearchIndex
from pipelines.pharmacy.served import (
    MAX_CART_ITEMS,
    PLACEMENTS_FILE,
    POLICY_FILE,
    PlacementTables,
    PolicyRules,
    SafetyTables,
    parse_blend,
)
from pipelines.repository.versions import (
    BACKEND_COMMON_PY,
    BACKEND_DIR,
    _check_name,
    _positive,
    list_versions,
    publish_version,
)

SIMILAR_ITEMS = "similar_items"
RECOMMEND = "recommend"
#: The order models must be loaded in: recommend calls gpt4rec through BLS.
LOAD_ORDER = ("gpt4rec", SIMILAR_ITEMS, RECOMMEND)

SIMILAR_BACKEND_PY = BACKEND_DIR / "similar_items.py"
RECOMMEND_BACKEND_PY = BACKEND_DIR / "recommend.py"
PHARMACY_PY = Path(served.__file__)  # copied as rxrec_pharmacy.py: the backend imports it by that name
PHARMACY_MODULE_FILE = "rxrec_pharmacy.py"
SEARCH_PY = Path(search.__file__)  # copied as rxrec_search.py (it imports rxrec_pharmacy beside it)
SEARCH_MODULE_FILE = "rxrec_search.py"
USERS_PY = Path(user_vectors.__file__)  # copied as rxrec_users.py (it imports rxrec_pharmacy beside it)
USERS_MODULE_FILE = "rxrec_users.py"
USER_INPUT = "user_id"  # optional int64 [batch, 1]: the request's user, 0 = anonymous
SCORER_FILE = "gpt4rec.onnx"  # in a recommend version scoring in process: the gpt4rec version's model.onnx
#: How recommend gets gpt4rec's top-k: "in_process" runs its own copy of the exported model (CPU serving: one
#: Python hop per request, not two), "bls" calls the gpt4rec model (a GPU node's TensorRT engine).
GPT4REC_SCORINGS = ("in_process", "bls")

# Tensor names (the backends repeat them: they run in Triton's environment, not this package's).
SIMILAR_INPUT = "item_id"  # int64 [batch, 1]
SESSION_INPUT = "session_ids"  # int64 [batch, seq], 0 = padding; [[0]] is an empty session
PURCHASED_INPUT = "purchased_ids"  # optional int64 [batch, n], 0 = padding
CART_INPUT = "cart_ids"  # optional int64 [batch, n]: the cart now, 0 = padding
PRESCRIBED_INPUT = "prescribed_ids"  # optional int64 [batch, n]: products the user holds a prescription for
PLACEMENT_INPUT = "placement"  # optional BYTES [batch, 1]: home (default), product, cart, search
QUERY_INPUT = "query"  # optional BYTES [batch, 1]: the search placement's free text
PURCHASED_DAYS_INPUT = "purchased_days_ago"  # optional int64, shape of purchased_ids: days since each purchase
LOCATION_INPUT = "location"  # optional BYTES [batch, 1]: the delivery postcode
EVENT_TYPES_INPUT = "event_types"  # optional int64, shape of session_ids: event kind codes, 0 = unknown
OUTPUT_IDS = "item_ids"
OUTPUT_SCORES = "scores"
OUTPUT_SOURCE = "source"  # BYTES [batch, 1]: gpt4rec | rules | popularity
OUTPUT_UNKNOWN = "unknown_ids"  # int64 [batch, m]: ids dropped as unknown, 0-padded ([0] = none)
OUTPUT_REMOVED = "policy_removed"  # int64 [batch, len(served.REASONS)]: candidates the policy removed, per reason
OUTPUT_SHORT = "short_reason"  # BYTES [batch, 1]: b"" for a full list, else why it is short
OUTPUT_REASON_CODES = "reason_codes"  # BYTES [batch, k]: the source that placed each item
OUTPUT_REASONS = "reasons"  # BYTES [batch, k]: why, in words
SOURCES = ("gpt4rec", "rules", "popularity")

#: Serving-time routing, not the evaluation's cold-start slice (pipelines/evaluate/slices.py): GPT4Rec
#: answers a session only when it holds an item with at least this many training interactions (an
#: embedding that was trained); a session without one is answered by rules, then popularity.
WARM_MIN_INTERACTIONS = 3

FileContent = Path | bytes


# --------------------------------------------------------------------------- config.pbtxt


def _tensor(name: str, data_type: str, dims: str, optional: bool = False) -> str:
    flag = "\n    optional: true" if optional else ""
    return f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {dims} ]{flag}\n  }}'


def _config_text(
    model_name: str,
    *,
    max_batch_size: int,
    inputs: list[str],
    outputs: list[str],
    instance_count: int,
    max_queue_delay_us: int,
    num_versions: int,
    params: Mapping[str, object],
) -> str:
    for name, value in [("max_batch_size", max_batch_size), ("instance_count", instance_count),
                        ("num_versions", num_versions)]:
        _positive(name, value)
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    param_lines = "\n".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    input_lines, output_lines = ",\n".join(inputs), ",\n".join(outputs)
    return f"""# Written by pipelines/repository/models.py; regenerate rather than edit by hand.
name: "{model_name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
{input_lines}
]
output [
{output_lines}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: {instance_count}
    kind: KIND_CPU
  }}
]
version_policy: {{ latest: {{ num_versions: {num_versions} }} }}
{param_lines}
"""


def write_similar_items_config(
    repo: Path,
    *,
    top_k: int,
    n_items: int,
    max_batch_size: int,
    instance_count: int = 1,
    max_queue_delay_us: int = 500,
    model_name: str = SIMILAR_ITEMS,
) -> Path:
    """Write repo/similar_items/config.pbtxt: item_id [1] in, item_ids/scores [top_k] out."""
    _check_name(model_name)
    _positive("top_k", top_k)
    _positive("n_items", n_items)
    text = _config_text(
        model_name, max_batch_size=max_batch_size, instance_count=instance_count,
        max_queue_delay_us=max_queue_delay_us, num_versions=1,
        inputs=[_tensor(SIMILAR_INPUT, "TYPE_INT64", "1")],
        outputs=[_tensor(OUTPUT_IDS, "TYPE_INT64", str(top_k)), _tensor(OUTPUT_SCORES, "TYPE_FP32", str(top_k))],
        params={"n_items": n_items, "top_k": top_k, "intra_op_num_threads": 1},
    )
    path = Path(repo) / model_name / "config.pbtxt"
    atomic_write_text(path, text)
    return path


def write_recommend_config(
    repo: Path,
    *,
    top_k: int,
    n_items: int,
    max_batch_size: int,
    gpt4rec_model: str = "gpt4rec",
    gpt4rec_max_len: int,
    gpt4rec_max_batch_size: int,
    filter_purchased: bool = True,
    warm_min_interactions: int = WARM_MIN_INTERACTIONS,
    rules_recent_items: int = 3,
    rules_decay: float = 0.5,
    policy: PolicyRules | None = None,
    max_cart_items: int = MAX_CART_ITEMS,
    blends: Mapping[str, str] | None = None,
    search_candidates: int = 50,
    search_personal_weight: float = 0.5,
    max_query_bytes: int = MAX_QUERY_BYTES,
    refill_due_within_days: int = 7,
    refill_overdue_days: int = 30,
    users: UsersSettings | None = None,
    instance_count: int = 1,
    max_queue_delay_us: int = 500,
    gpt4rec_scoring: str = "bls",
    model_name: str = RECOMMEND,
) -> Path:
    """Write repo/recommend/config.pbtxt for the entry point (sessions in, top_k + source out).

    The parameters tell the backend which model to call (``gpt4rec_model``, whose
    ``gpt4rec_max_len`` and ``gpt4rec_max_batch_size`` it respects), whether ``purchased_ids`` are
    filtered out, when a session counts as cold, how rules are fired (as in params.yaml `rules`) and
    which safety checks apply (params.yaml `policy`; all of them by default), what each placement
    blends (params.yaml `placements`, as "source:slots,..."), how search re-ranks (params.yaml `search`) and
    when a refill is offered (params.yaml `refills`) and how a user's stored vector is searched (params.yaml `users`).
    ``gpt4rec_scoring`` (GPT4REC_SCORINGS) says whether the version's own copy of the model scores or the
    ``gpt4rec_model`` is called.
    """
    blends = dict(blends or PlacementsSettings().blends())
    for name, text in blends.items():
        try:
            parse_blend(text)
        except ValueError as exc:
            raise ValueError(f"placement {name}: {exc}") from exc
    _check_name(model_name)
    _check_name(gpt4rec_model)
    for name, value in [("top_k", top_k), ("n_items", n_items), ("gpt4rec_max_len", gpt4rec_max_len),
                        ("gpt4rec_max_batch_size", gpt4rec_max_batch_size),
                        ("warm_min_interactions", warm_min_interactions),
                        ("rules_recent_items", rules_recent_items), ("max_cart_items", max_cart_items),
                        ("search_candidates", search_candidates), ("max_query_bytes", max_query_bytes)]:
        _positive(name, value)
    if not 0 < rules_decay <= 1:
        raise ValueError(f"rules_decay must be in (0, 1], got {rules_decay}")
    if refill_due_within_days < 0 or refill_overdue_days < 0:
        raise ValueError(f"refill days must be >= 0, got {refill_due_within_days} and {refill_overdue_days}")
    if search_personal_weight < 0:
        raise ValueError(f"search_personal_weight must be >= 0, got {search_personal_weight}")
    if gpt4rec_scoring not in GPT4REC_SCORINGS:
        raise ValueError(f"gpt4rec_scoring must be one of {GPT4REC_SCORINGS}, got {gpt4rec_scoring!r}")
    text = _config_text(
        model_name, max_batch_size=max_batch_size, instance_count=instance_count,
        max_queue_delay_us=max_queue_delay_us, num_versions=1,
        inputs=[_tensor(SESSION_INPUT, "TYPE_INT64", "-1"),
                _tensor(PURCHASED_INPUT, "TYPE_INT64", "-1", optional=True),
                _tensor(EVENT_TYPES_INPUT, "TYPE_INT64", "-1", optional=True),
                _tensor(CART_INPUT, "TYPE_INT64", "-1", optional=True),
                _tensor(PRESCRIBED_INPUT, "TYPE_INT64", "-1", optional=True),
                _tensor(PLACEMENT_INPUT, "TYPE_STRING", "1", optional=True),
                _tensor(QUERY_INPUT, "TYPE_STRING", "1", optional=True),
                _tensor(PURCHASED_DAYS_INPUT, "TYPE_INT64", "-1", optional=True),
                _tensor(LOCATION_INPUT, "TYPE_STRING", "1", optional=True),
                _tensor(USER_INPUT, "TYPE_INT64", "1", optional=True)],
        outputs=[_tensor(OUTPUT_IDS, "TYPE_INT64", str(top_k)), _tensor(OUTPUT_SCORES, "TYPE_FP32", str(top_k)),
                 _tensor(OUTPUT_SOURCE, "TYPE_STRING", "1"), _tensor(OUTPUT_UNKNOWN, "TYPE_INT64", "-1"),
                 _tensor(OUTPUT_REMOVED, "TYPE_INT64", str(len(served.REASONS))),
                 _tensor(OUTPUT_SHORT, "TYPE_STRING", "1"), _tensor(OUTPUT_REASON_CODES, "TYPE_STRING", str(top_k)),
                 _tensor(OUTPUT_REASONS, "TYPE_STRING", str(top_k))],
        params={"n_items": n_items, "top_k": top_k, "gpt4rec_model": gpt4rec_model,
                "gpt4rec_max_len": gpt4rec_max_len, "gpt4rec_max_batch_size": gpt4rec_max_batch_size,
                "gpt4rec_scoring": gpt4rec_scoring,
                "filter_purchased": str(bool(filter_purchased)).lower(),
                "warm_min_interactions": warm_min_interactions, "rules_recent_items": rules_recent_items,
                "rules_decay": rules_decay, "max_cart_items": max_cart_items,
                "policy_checks": (policy or PolicyRules()).checks(), "search_candidates": search_candidates,
                "search_personal_weight": search_personal_weight, "max_query_bytes": max_query_bytes,
                "refill_due_within_days": refill_due_within_days, "refill_overdue_days": refill_overdue_days,
                **{f"users_{key}": value for key, value in (users or UsersSettings()).model_dump().items()},
                **{f"placement_{name}": text for name, text in blends.items()}},
    )
    path = Path(repo) / model_name / "config.pbtxt"
    atomic_write_text(path, text)
    return path


# --------------------------------------------------------------------------- version folders


def _digest(content: FileContent) -> str:
    h = hashlib.sha256()
    if isinstance(content, bytes):
        h.update(content)
        return h.hexdigest()
    with open(content, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(files: Mapping[str, FileContent]) -> tuple[str, dict[str, str]]:
    """(fingerprint of a whole version folder, sha256 per file): same files, same fingerprint."""
    digests = {name: _digest(content) for name, content in sorted(files.items())}
    combined = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    return combined, digests


def newest_version(repo: Path, model_name: str) -> tuple[int, dict[str, Any]] | None:
    """(number, lineage.json content) of the newest version folder, or None if there is none."""
    versions = list_versions(repo, model_name)
    if not versions:
        return None
    lineage_file = Path(repo) / model_name / str(versions[-1]) / "lineage.json"
    lineage = json.loads(lineage_file.read_text()) if lineage_file.exists() else {}
    return versions[-1], lineage


@dataclass(frozen=True)
class VersionWritten:
    """What a version writer did: the folder that holds the files now, and whether it is new."""

    path: Path
    version: int
    new: bool
    fingerprint: str


def write_model_version(
    repo: Path, model_name: str, files: Mapping[str, FileContent], *, metadata: Mapping[str, Any]
) -> VersionWritten:
    """Add a version folder holding `files` (name -> source path or bytes) and lineage.json.

    Nothing is written when the newest folder's lineage.json has the same fingerprint. Otherwise the
    folder is built under a hidden temp name and renamed to the next free number, never replacing
    an existing folder (another writer taking the number first just moves us to the next one).
    """
    _check_name(model_name)
    for name in files:
        if not name or "/" in name or name.startswith(".") or name == "lineage.json":
            raise ValueError(f"{model_name}: invalid file name {name!r} for a version folder")
    for name, content in files.items():
        if isinstance(content, Path) and not content.is_file():
            raise FileNotFoundError(f"{model_name}: {name} source not found: {content}")
    json.dumps(dict(metadata))  # fail before writing anything if metadata is not serialisable
    fp, digests = fingerprint(files)
    newest = newest_version(repo, model_name)
    if newest is not None and newest[1].get("fingerprint") == fp:
        return VersionWritten(Path(repo) / model_name / str(newest[0]), newest[0], False, fp)

    def fill(folder: Path) -> dict[str, Any]:
        for name, content in files.items():
            if isinstance(content, bytes):
                (folder / name).write_bytes(content)
            else:
                shutil.copyfile(content, folder / name)
        return {"fingerprint": fp, "files": digests, "metadata": dict(metadata)}

    target = publish_version(repo, model_name, fill)
    return VersionWritten(target, int(target.name), True, fp)


def _npy(array: np.ndarray) -> bytes:
    """Bytes of a .npy file (deterministic for the same array, so fingerprints are stable)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_similar_items_version(
    repo: Path, onnx_bytes: bytes, known: np.ndarray, *, metadata: Mapping[str, Any],
    model_name: str = SIMILAR_ITEMS,
) -> VersionWritten:
    """A similar_items version: model.onnx, the Python backend as model.py, known.npy."""
    known = np.asarray(known, dtype=bool)
    if known.ndim != 1 or len(known) < 2:
        raise ValueError(f"known must be a 1-D bool mask over item ids 0..n_items, got shape {known.shape}")
    files: dict[str, FileContent] = {"model.onnx": onnx_bytes, "model.py": SIMILAR_BACKEND_PY,
                                     BACKEND_COMMON_PY.name: BACKEND_COMMON_PY, "known.npy": _npy(known)}
    return write_model_version(repo, model_name, files, metadata=metadata)


def _npz(**arrays: np.ndarray) -> bytes:
    """Bytes of an .npz (what np.load reads) with fixed zip timestamps: same arrays, same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, _npy(array), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


@dataclass(frozen=True)
class FallbackTables:
    """What `recommend` answers with when GPT4Rec cannot: rules, then popularity.

    Every array is indexed by item id (0 = padding) over 0..n_items.
    """

    popularity: np.ndarray  # float32: higher = more popular now
    interactions: np.ndarray  # int64: training interactions per item (warm vs cold)
    catalogue: np.ndarray  # bool: the id is a product of the catalogue
    rules: sp.csr_matrix | None  # float32 [n + 1, n + 1]: rule A -> B score, or None (no rules tier)
    policy: SafetyTables | None = None  # None: permissive tables (no catalogue flags; say so where it happens)
    placements: PlacementTables | None = None  # None: no names, prices or substitutes (no catalogue)
    search: SearchIndex | None = None  # None: nothing to search (no catalogue)
    users: UserVectors | None = None  # None: the champion stored no user vectors (home without `history`)

    @property
    def n_items(self) -> int:
        return len(self.popularity) - 1

    def check(self) -> None:
        """Shapes and values the backend relies on; ValueError naming the table that is wrong."""
        n = len(self.popularity)
        for name in ("interactions", "catalogue"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"fallback table {name} has {len(getattr(self, name))} rows, popularity has {n}")
        if self.rules is not None and self.rules.shape != (n, n):
            raise ValueError(f"rules matrix is {self.rules.shape}, expected ({n}, {n}) for n_items={n - 1}")
        if not np.isfinite(self.popularity).all():
            raise ValueError("popularity holds non-finite scores")
        if self.policy is not None and self.policy.n_items != n - 1:
            raise ValueError(f"policy tables cover {self.policy.n_items} items, popularity {n - 1}")
        if self.placements is not None and len(self.placements.names) != n:
            raise ValueError(f"placement tables cover {len(self.placements.names) - 1} items, popularity {n - 1}")
        if self.search is not None and int(self.search.n_items) != n - 1:
            raise ValueError(f"search index covers {int(self.search.n_items)} items, popularity {n - 1}")
        if self.users is not None and self.users.n_items != n - 1:
            raise ValueError(f"user vectors score {self.users.n_items} items, popularity {n - 1}")

    def files(self) -> dict[str, bytes]:
        """The version-folder files: popularity.npy, interactions.npy, catalogue.npy, policy.npz, placements.npz,
        search.npz, (with rules) rules.npz and (with stored user vectors) users.npz."""
        self.check()
        policy = self.policy if self.policy is not None else SafetyTables.permissive(self.n_items)
        placements = self.placements if self.placements is not None else PlacementTables.empty(self.n_items)
        out = {"popularity.npy": _npy(np.asarray(self.popularity, dtype=np.float32)),
               "interactions.npy": _npy(np.asarray(self.interactions, dtype=np.int64)),
               "catalogue.npy": _npy(np.asarray(self.catalogue, dtype=bool)), POLICY_FILE: policy.to_bytes(),
               PLACEMENTS_FILE: placements.to_bytes(),
               SEARCH_FILE: (self.search if self.search is not None else SearchIndex.empty(self.n_items)).to_bytes()}
        if self.rules is not None:
            rules = sp.csr_matrix(self.rules, dtype=np.float32)
            rules.sort_indices()
            out["rules.npz"] = _npz(indptr=rules.indptr.astype(np.int64), indices=rules.indices.astype(np.int64),
                                    data=rules.data.astype(np.float32))
        if self.users is not None:
            out[USERS_FILE] = self.users.to_bytes()
        return out


def write_recommend_version(
    repo: Path, tables: FallbackTables, *, metadata: Mapping[str, Any], scorer: Path | None = None,
    model_name: str = RECOMMEND
) -> VersionWritten:
    """A recommend version: the entry point's backend as model.py, the fallback tables and, when it scores in
    process, `scorer` (the gpt4rec version's model.onnx) as gpt4rec.onnx: the version then carries the exact
    model it serves, so rolling recommend back rolls its personal list back with it."""
    files: dict[str, FileContent] = {"model.py": RECOMMEND_BACKEND_PY, BACKEND_COMMON_PY.name: BACKEND_COMMON_PY,
                                     PHARMACY_MODULE_FILE: PHARMACY_PY, SEARCH_MODULE_FILE: SEARCH_PY,
                                     USERS_MODULE_FILE: USERS_PY,
                                     **tables.files(), **({SCORER_FILE: scorer} if scorer is not None else {})}
    return write_model_version(repo, model_name, files, metadata=metadata)
