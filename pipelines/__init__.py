"""rxrec, the library: each package depends only on the ones below it (pyproject's import-linter contracts).

Wired here, at the root: the model families type their own params sections, so the settings loader in
core gets their classes from the family registry (imported when the first settings are validated).
"""

from __future__ import annotations

from collections.abc import Mapping

from pipelines.core.config import ParamsSection, add_section_source


def _model_family_sections() -> Mapping[str, type[ParamsSection]]:
    from pipelines.models.families import section_types

    return section_types()


add_section_source(_model_family_sections)
