"""Clients for the served models: sessions or items in, top-k item ids and scores out.

- `recommend`: the raw `gpt4rec` model over HTTP (non-empty sessions of known ids).
- `recommend_session`: the `recommend` entry point over HTTP or gRPC: any session (empty, unknown
  ids), optional purchased items to filter; says which source answered.
- `similar_items`: the `similar_items` model over HTTP or gRPC.

A server that cannot be reached or does not answer within ``timeout_s`` raises
ServerUnavailableError (a ConnectionError) naming the server and what to do; no call waits longer.

Sessions are left-padded with 0 to a common length (0 is padding in the model contract, item ids
are 1..n_items), optionally truncated to the most recent ``max_len`` items first, and sent as one
batch. Server-side rejections raise tritonclient.utils.InferenceServerException with the model's
message; caller bugs (non-integer or negative ids) raise ValueError before anything is sent.

Event kinds (optional, one per session item: names "view", "click", "add_to_cart", "purchase" or
their codes 1..4, 0 = unknown) are padded exactly like the ids and sent as `event_types`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipelines.core.contract import EVENT_TYPES_NAME, INPUT_NAME, OUTPUT_IDS, OUTPUT_SCORES, left_pad
from pipelines.pharmacy.served import PLACEMENTS, REASONS

EventKind = int | str
_INT64 = np.iinfo(np.int64)


class ServerUnavailableError(ConnectionError):
    """The Triton server could not be reached or did not answer in time (no answer, not a rejection).

    A ConnectionError, so callers can tell "retry or start the server" apart from a server-side
    rejection of the request (tritonclient.utils.InferenceServerException) and from bad input (ValueError).
    """


#: gRPC statuses that mean "no server answered" rather than "the server rejected the request".
_UNAVAILABLE_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}


def _unavailable(exc: BaseException, *, url: str, protocol: str, timeout_s: float) -> ServerUnavailableError | None:
    """A ServerUnavailableError naming the server and what to do if exc means "no answer", else None."""
    from geventhttpclient.response import HTTPParseError
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        if str(exc.status()) not in _UNAVAILABLE_GRPC:
            return None  # the server answered: a rejection, keep tritonclient's exception
        detail = exc.message() or str(exc)
    elif isinstance(exc, (OSError, HTTPParseError)):
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        return None
    timed_out = isinstance(exc, TimeoutError) or "DEADLINE_EXCEEDED" in str(getattr(exc, "status", lambda: "")())
    what = f"did not answer within {timeout_s:g}s" if timed_out else "is unreachable"
    local = url.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")
    remedy = ("check it with `rxrec serve status` and start or restart it with `rxrec serve start`" if local else
              "check the server that RXREC_TRITON_URL / RXREC_TRITON_GRPC_URL name (the profile's Triton; rxrec "
              "does not start it)")
    return ServerUnavailableError(
        f"the Triton server at {url} ({protocol}) {what} ({detail}); {remedy} (a request that got no answer "
        "may be retried)")


def kind_codes(kinds: list[list[EventKind]], sessions: list[list[int]]) -> list[list[int]]:
    """Event kind codes per session item (names or codes in; 0 = unknown), one list per session."""
    from pipelines.data.sequences import EVENT_KIND_CODES

    if not isinstance(kinds, (list, tuple)) or len(kinds) != len(sessions):
        count = len(kinds) if isinstance(kinds, (list, tuple)) else type(kinds).__name__
        raise ValueError(f"kinds must be one list per session: got {count} for {len(sessions)} sessions")
    out: list[list[int]] = []
    for i, (row, session) in enumerate(zip(kinds, sessions)):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise ValueError(f"kinds {i} must be a list of event kinds, got {type(row).__name__}")
        row = list(row)
        if len(row) != len(list(session)):
            raise ValueError(f"session {i} has {len(list(session))} items but {len(row)} event kinds: give one per item")
        codes = []
        for kind in row:
            if isinstance(kind, str) and kind in EVENT_KIND_CODES:
                codes.append(EVENT_KIND_CODES[kind])
            elif isinstance(kind, numbers.Integral) and not isinstance(kind, (bool, np.bool_)) \
                    and 0 <= int(kind) <= len(EVENT_KIND_CODES):
                codes.append(int(kind))
            else:
                names = ", ".join(EVENT_KIND_CODES)
                raise ValueError(f"session {i} has event kind {kind!r}: use one of {names} "
                                 f"or a code 0..{len(EVENT_KIND_CODES)} (0 = unknown)")
        out.append(codes)
    return out


def pad_sessions(sessions: list[list[int]], max_len: int | None = None,
                 kinds: list[list[EventKind]] | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Left-pad (and left-truncate to max_len) sessions into an int64 [batch, seq] array.

    With ``kinds`` (one event kind per item, names or codes), returns (ids, kind codes), both
    padded and truncated the same way.
    Raises ValueError for an empty list, an empty session, or ids that are not integers: those
    are caller bugs that would otherwise come back as a less clear server error.
    """
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}")
    if not isinstance(sessions, (list, tuple)) or len(sessions) == 0:
        raise ValueError("sessions must be a non-empty list of sessions (lists of item ids)")
    rows: list[list[int]] = []
    for i, session in enumerate(sessions):
        if isinstance(session, (str, bytes)) or not hasattr(session, "__iter__"):
            raise ValueError(f"session {i} must be a list of item ids, got {type(session).__name__}")
        items = list(session)
        if not items:
            raise ValueError(
                f"session {i} is empty; the model needs at least one item "
                "(use a popularity fallback for users without history)"
            )
        for item in items:
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Integral):
                # ValueError, not TypeError: the documented contract of recommend() for bad ids
                raise ValueError(  # noqa: TRY004
                    f"session {i} has a non-integer item id {item!r} ({type(item).__name__})"
                )
            if not _INT64.min <= item <= _INT64.max:
                raise ValueError(f"session {i} has an item id that does not fit int64: {item}")
        rows.append([int(item) for item in items])
    batch = left_pad(rows, max_len)
    if kinds is None:
        return batch
    return batch, left_pad(kind_codes(kinds, rows), max_len, width=batch.shape[1])


def recommend(
    sessions: list[list[int]],
    *,
    url: str = "127.0.0.1:8000",
    model_name: str = "gpt4rec",
    max_len: int | None = None,
    timeout_s: float = 10.0,
    kinds: list[list[EventKind]] | None = None,
) -> list[tuple[list[int], list[float]]]:
    """Top-k recommendations per session as (item_ids, scores), best first.

    ``kinds``: the event kind of each session item (only for a model trained with event kinds).
    Server-side rejections (e.g. an id outside 1..n_items) raise
    tritonclient.utils.InferenceServerException carrying the model's message.
    """
    padded = pad_sessions(sessions, max_len, kinds)
    batch, kind_batch = padded if isinstance(padded, tuple) else (padded, None)
    inputs = {INPUT_NAME: batch} | ({EVENT_TYPES_NAME: kind_batch} if kind_batch is not None else {})
    out = _infer(model_name, inputs, [OUTPUT_IDS, OUTPUT_SCORES], url=url, protocol="http", timeout_s=timeout_s)
    ids, scores = out[OUTPUT_IDS], out[OUTPUT_SCORES]
    return [(ids[r].astype(int).tolist(), scores[r].astype(float).tolist()) for r in range(len(batch))]


Protocol = Literal["http", "grpc"]
DEFAULT_URLS: dict[str, str] = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}


def _ids_matrix(rows: list[list[int]], what: str) -> np.ndarray:
    """Left-pad rows of ids (empty rows allowed: all padding) into int64 [len(rows), max(1, width)]."""
    if not isinstance(rows, (list, tuple)) or len(rows) == 0:
        raise ValueError(f"{what} must be a non-empty list of lists of item ids")
    clean: list[list[int]] = []
    for r, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise ValueError(f"{what} {r} must be a list of item ids, got {type(row).__name__}")
        items = list(row)
        for item in items:
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Integral):
                raise ValueError(f"{what} {r} has a non-integer item id {item!r} ({type(item).__name__})")  # noqa: TRY004
            if item < 0:
                raise ValueError(f"{what} {r} has a negative item id {item}; ids are >= 1 (0 is padding)")
            if item > _INT64.max:
                raise ValueError(f"{what} {r} has an item id that does not fit int64: {item}")
        clean.append([int(item) for item in items])
    return left_pad(clean)


def _infer(model_name: str, inputs: dict[str, np.ndarray], outputs: list[str], *, url: str | None,
           protocol: Protocol, timeout_s: float) -> dict[str, np.ndarray]:
    """One inference over HTTP or gRPC; int64 inputs (object arrays of bytes go as BYTES), outputs as numpy."""
    if protocol == "http":
        import tritonclient.http as module

        client: Any = module.InferenceServerClient(url=url or DEFAULT_URLS["http"], connection_timeout=timeout_s,
                                                   network_timeout=timeout_s)
        extra: dict[str, Any] = {}
    elif protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(url=url or DEFAULT_URLS["grpc"])
        extra = {"client_timeout": timeout_s}
    else:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    try:
        infer_inputs = []
        for name, array in inputs.items():
            infer_input = module.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT64")
            if protocol == "http":
                infer_input.set_data_from_numpy(array, binary_data=True)
            else:
                infer_input.set_data_from_numpy(array)
            infer_inputs.append(infer_input)
        requested = [module.InferRequestedOutput(name, binary_data=True) if protocol == "http"
                     else module.InferRequestedOutput(name) for name in outputs]
        try:
            result = client.infer(model_name, infer_inputs, outputs=requested, **extra)
        except Exception as exc:
            unavailable = _unavailable(exc, url=url or DEFAULT_URLS[protocol], protocol=protocol, timeout_s=timeout_s)
            if unavailable is None:
                raise
            raise unavailable from exc
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


def item_batch(item_ids: list[int]) -> np.ndarray:
    """The `item_id` input of similar_items, int64 [n, 1]; ValueError for what no server could answer."""
    if not isinstance(item_ids, (list, tuple)) or len(item_ids) == 0:
        raise ValueError("item_ids must be a non-empty list of item ids")
    for item in item_ids:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Integral):
            raise ValueError(f"item id {item!r} is not an integer ({type(item).__name__})")  # noqa: TRY004
        if not 1 <= int(item) <= np.iinfo(np.int64).max:
            raise ValueError(f"item id {item} is not an item id: ids are integers >= 1")
    return np.asarray([[int(i)] for i in item_ids], dtype=np.int64)


def similar_items(
    item_ids: list[int],
    *,
    url: str | None = None,
    protocol: Protocol = "http",
    model_name: str = "similar_items",
    timeout_s: float = 10.0,
) -> list[tuple[list[int], list[float]]]:
    """Top-k similar products per item as (item_ids, cosine scores), best first, the item excluded.

    An id the embedding table does not know comes back as InferenceServerException (INVALID_ARG).
    """
    batch = item_batch(item_ids)
    out = _infer(model_name, {"item_id": batch}, ["item_ids", "scores"], url=url, protocol=protocol,
                 timeout_s=timeout_s)
    return [(out["item_ids"][r].astype(int).tolist(), out["scores"][r].astype(float).tolist())
            for r in range(len(batch))]


@dataclass(frozen=True)
class Recommendation:
    """One session's answer from the `recommend` entry point."""

    item_ids: list[int]  # best first; -1 pads when fewer than k items could be offered
    scores: list[float]  # the source's own scores (comparable within one source only)
    source: str  # gpt4rec | rules | popularity
    unknown_ids: list[int]  # session ids the server dropped as unknown
    policy_removed: dict[str, int] = field(default_factory=dict)  # safety policy reason -> candidates removed
    short_reason: str = ""  # "" for a full list; why fewer than k items came back otherwise
    reason_codes: list[str] = field(default_factory=list)  # per item: personal, complements, substitutes, matches,
    # popular
    reasons: list[str] = field(default_factory=list)  # per item, why in words


def session_inputs(sessions: list[list[int]], *, purchased: list[list[int]] | None = None,
                   kinds: list[list[EventKind]] | None = None, cart: list[list[int]] | None = None,
                   prescribed: list[list[int]] | None = None, placement: str | list[str] | None = None,
                   query: str | list[str] | None = None, purchased_days_ago: list[list[int]] | None = None,
                   location: str | list[str] | None = None, user: int | list[int] | None = None) -> dict[str, np.ndarray]:
    """The inputs of the `recommend` entry point; ValueError (saying what to change) for caller bugs."""
    batch = _ids_matrix(sessions, "session")
    inputs = {"session_ids": batch}
    if kinds is not None:
        codes = kind_codes(kinds, [list(s) for s in sessions])
        inputs[EVENT_TYPES_NAME] = left_pad(codes, width=batch.shape[1])
    for name, lists, tensor in (("purchased", purchased, "purchased_ids"), ("cart", cart, "cart_ids"),
                                ("prescribed", prescribed, "prescribed_ids")):
        if lists is None:
            continue
        if not isinstance(lists, (list, tuple)) or len(lists) != len(batch):
            count = len(lists) if isinstance(lists, (list, tuple)) else type(lists).__name__
            raise ValueError(f"{name} has {count} lists for {len(batch)} sessions: give one list per session")
        inputs[tensor] = _ids_matrix(lists, f"{name} list")
    if purchased_days_ago is not None:  # one age per purchase, laid out exactly as purchased_ids
        if purchased is None or [len(p) for p in purchased] != [len(d) for d in purchased_days_ago]:
            raise ValueError("purchased_days_ago needs one age (days) per purchased item, list by list")
        inputs["purchased_days_ago"] = np.zeros_like(inputs["purchased_ids"])
        for r, days in enumerate(purchased_days_ago):
            inputs["purchased_days_ago"][r, inputs["purchased_ids"].shape[1] - len(days):] = days
    if location is not None:  # the server checks each postcode and names the row of a bad one
        codes = [location] * len(batch) if isinstance(location, str) else list(location)
        if len(codes) != len(batch) or not all(isinstance(c, str) for c in codes):
            raise ValueError(f"location must be one postcode or one per session ({len(batch)}), got {location!r}")
        inputs["location"] = np.array([[c.encode()] for c in codes], dtype=np.object_)
    if user is not None:  # the server says which row holds a negative id
        ids = [user] * len(batch) if isinstance(user, int) else list(user)
        if len(ids) != len(batch) or not all(isinstance(u, int) and not isinstance(u, bool) for u in ids):
            raise ValueError(f"user must be one user id or one per session ({len(batch)}; 0 = anonymous), got {user!r}")
        inputs["user_id"] = np.array(ids, dtype=np.int64).reshape(-1, 1)
    if placement is not None:
        names = [placement] * len(batch) if isinstance(placement, str) else list(placement)
        if len(names) != len(batch) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"placement must be one name or one per session ({len(batch)}), got {placement!r}")
        unknown = sorted({n for n in names if n not in PLACEMENTS})
        if unknown:
            raise ValueError(f"placement {unknown[0]!r} is not one of {list(PLACEMENTS)}")
        inputs["placement"] = np.array([[n.encode()] for n in names], dtype=np.object_)
    if query is not None:  # the server checks the text itself (empty, too long, not UTF-8) and says which row
        if placement is None:
            raise ValueError("a query goes with placement='search' (one placement per session)")
        texts = [query] * len(batch) if isinstance(query, str) else list(query)
        if len(texts) != len(batch) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"query must be one text or one per session ({len(batch)}; '' off search), got {query!r}")
        inputs["query"] = np.array([[t.encode() if name == "search" else b""] for t, name in zip(texts, names)],
                                   dtype=np.object_)
    return inputs


def recommend_session(
    sessions: list[list[int]],
    *,
    purchased: list[list[int]] | None = None,
    kinds: list[list[EventKind]] | None = None,
    cart: list[list[int]] | None = None,
    prescribed: list[list[int]] | None = None,
    placement: str | list[str] | None = None,
    query: str | list[str] | None = None,
    purchased_days_ago: list[list[int]] | None = None,
    location: str | list[str] | None = None,
    user: int | list[int] | None = None,
    url: str | None = None,
    protocol: Protocol = "http",
    model_name: str = "recommend",
    timeout_s: float = 10.0,
) -> list[Recommendation]:
    """Ask the `recommend` entry point for each session (empty sessions and unknown ids allowed).

    `purchased` (one list per session) names items never to recommend, e.g. already bought.
    `kinds` (one list per session, one per item: names or codes) are the sessions' event kinds.
    `cart` is what each session has in its cart now; `prescribed` the products its user holds a
    prescription for. Purchases and prescriptions are the records that let a prescription-only
    product of the same molecules be recommended (docs/pharmacy.md). `placement` (one for all, or one
    per session): home (default), product (the viewed product is the session's latest item), cart or
    search, whose free text is `query` (one for all, or one per session; ignored off search).
    `purchased_days_ago` (one list per session, one age in days per purchased item) lets the home page offer
    refills of chronic medicines whose last pack runs out soon. `location` (a delivery postcode, one for all or
    one per session; "" unknown) drops products that do not ship there. `user` (one id for all or one per session;
    0 anonymous) lets home add that user's best items by the vector stored for them at training (`history`).
    """
    inputs = session_inputs(sessions, purchased=purchased, kinds=kinds, cart=cart, prescribed=prescribed,
                            placement=placement, query=query, purchased_days_ago=purchased_days_ago,
                            location=location, user=user)
    batch = inputs["session_ids"]
    out = _infer(model_name, inputs, ["item_ids", "scores", "source", "unknown_ids", "policy_removed", "short_reason",
                                     "reason_codes", "reasons"],
                 url=url, protocol=protocol, timeout_s=timeout_s)
    answers = []
    for r in range(len(batch)):
        n_shown = int((out["item_ids"][r] >= 0).sum())
        answers.append(Recommendation(
            item_ids=out["item_ids"][r].astype(int).tolist(), scores=out["scores"][r].astype(float).tolist(),
            source=_text(out["source"][r].reshape(-1)[0]),
            unknown_ids=[int(i) for i in out["unknown_ids"][r] if i != 0],
            policy_removed={reason: int(n) for reason, n in zip(REASONS, out["policy_removed"][r], strict=True) if n},
            short_reason=_text(out["short_reason"][r].reshape(-1)[0]),
            reason_codes=[_text(c) for c in out["reason_codes"][r].reshape(-1)][:n_shown],
            reasons=[_text(t) for t in out["reasons"][r].reshape(-1)][:n_shown]))
    return answers


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
