"""Real-data adapters: every source ends in the same internal tables as the generator (schema.py).

`load_source` is what the `generate` stage calls: the generated world for `data.source: synthetic`,
an adapter otherwise. Relative paths in params.yaml are read from the project root, so
`../shared/datasets/...` works from any work directory.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.core.config import PROJECT_ROOT, DataSettings
from pipelines.core.files import file_md5
from pipelines.data.generate import World


class SourceError(ValueError):
    """Input files that cannot become the internal tables; the message names the file and the problem."""


def resolve(path: str | Path, what: str) -> Path:
    """A params path made absolute (relative = from the project root); a clear error when missing."""
    if not str(path):
        raise SourceError(f"{what} is not set in params.yaml")
    full = Path(path) if Path(path).is_absolute() else (PROJECT_ROOT / path)
    if not full.exists():
        raise SourceError(f"{what} {path!r} not found (looked at {full.resolve()})")
    return full.resolve()


def load_source(settings: DataSettings, progress: bool = True) -> World:
    """The raw tables of the configured source (`data.source`)."""
    if settings.source == "synthetic":
        from pipelines.data.generate import generate_world

        return generate_world(settings, progress=progress)
    if settings.source == "s3rec":
        from pipelines.data.adapters.s3rec import read_s3rec

        attributes = resolve(settings.s3rec_attributes, "data.s3rec_attributes") if settings.s3rec_attributes else None
        return read_s3rec(resolve(settings.s3rec_path, "data.s3rec_path"), attributes, dataset=settings.dataset)
    if settings.source == "tables":
        from pipelines.data.adapters.tables import read_tables

        catalogue = resolve(settings.tables_catalogue, "data.tables_catalogue") if settings.tables_catalogue else None
        return read_tables(resolve(settings.tables_events, "data.tables_events"), catalogue,
                           columns=settings.tables_columns, event_types=settings.tables_event_types,
                           dataset=settings.dataset)
    raise SourceError(f"unknown data.source {settings.source!r}: use synthetic, s3rec or tables")


__all__ = ["SourceError", "file_md5", "load_source", "resolve"]
