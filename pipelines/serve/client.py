"""Client for the served recommender: sessions in, top-k item ids and scores out.

Sessions are left-padded with 0 to a common length (0 is padding in the model contract, item ids
are 1..n_items), optionally truncated to the most recent ``max_len`` items first, and sent as one
batch to Triton over HTTP.
"""

from __future__ import annotations

import numbers

import numpy as np
import tritonclient.http as httpclient

from pipelines.export.contract import INPUT_NAME, OUTPUT_IDS, OUTPUT_SCORES


def pad_sessions(sessions: list[list[int]], max_len: int | None = None) -> np.ndarray:
    """Left-pad (and left-truncate to max_len) sessions into an int64 [batch, seq] array.

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
        rows.append([int(item) for item in items])
    if max_len is not None:
        rows = [row[-max_len:] for row in rows]
    width = max(len(row) for row in rows)
    batch = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        try:
            batch[r, width - len(row) :] = row
        except OverflowError as exc:
            raise ValueError(f"session {r} has an item id that does not fit int64: {exc}") from exc
    return batch


def recommend(
    sessions: list[list[int]],
    *,
    url: str = "127.0.0.1:8000",
    model_name: str = "gpt4rec",
    max_len: int | None = None,
    timeout_s: float = 10.0,
) -> list[tuple[list[int], list[float]]]:
    """Top-k recommendations per session as (item_ids, scores), best first.

    Server-side rejections (e.g. an id outside 1..n_items) raise
    tritonclient.utils.InferenceServerException carrying the model's message.
    """
    batch = pad_sessions(sessions, max_len)
    client = httpclient.InferenceServerClient(
        url=url, connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        infer_input = httpclient.InferInput(INPUT_NAME, list(batch.shape), "INT64")
        infer_input.set_data_from_numpy(batch, binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=True) for name in (OUTPUT_IDS, OUTPUT_SCORES)
        ]
        result = client.infer(model_name, [infer_input], outputs=outputs)
        ids = result.as_numpy(OUTPUT_IDS)
        scores = result.as_numpy(OUTPUT_SCORES)
    finally:
        client.close()
    return [(ids[r].astype(int).tolist(), scores[r].astype(float).tolist()) for r in range(len(batch))]
