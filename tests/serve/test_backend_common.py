"""The file every Triton backend imports repeats the contract's names (it runs where rxrec is not installed)."""

import ast

from pipelines.core import contract
from pipelines.repository.versions import BACKEND_COMMON_PY, BACKEND_DIR


def _constants(path) -> dict[str, object]:
    tree = ast.parse(path.read_text())
    return {node.targets[0].id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.targets[0], ast.Name)}


def test_backend_names_are_the_contract_names():
    names = _constants(BACKEND_COMMON_PY)
    for name in ("INPUT_NAME", "EVENT_TYPES_NAME", "OUTPUT_IDS", "OUTPUT_SCORES", "MODEL_FILE", "N_ITEMS", "TOP_K",
                 "EVENT_KINDS"):
        assert names[name] == getattr(contract, name), name


def test_every_backend_takes_its_names_from_the_shared_file():
    for backend in ("model.py", "similar_items.py", "recommend.py"):
        source = (BACKEND_DIR / backend).read_text()
        assert "from rxrec_backend import" in source, backend
        own = _constants(BACKEND_DIR / backend)
        assert not {"OUTPUT_IDS", "OUTPUT_SCORES", "EVENT_TYPES_NAME"} & own.keys(), backend


def test_recommend_repeats_the_names_its_writer_uses():
    """recommend.py cannot import pipelines.repository.models (the writer of its config and version folder)."""
    from pipelines.repository import models

    own = _constants(BACKEND_DIR / "recommend.py")
    shared = {name for name in own if name.isupper() and hasattr(models, name)}
    assert {"SCORER_FILE", "SESSION_INPUT", "USER_INPUT", "OUTPUT_REASONS"} <= shared
    for name in shared:
        assert own[name] == getattr(models, name), name
