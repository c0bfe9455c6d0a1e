"""Load a script that is not in a package (infra/stack/stack.py, infra/airflow/launcher.py) as a module."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from pipelines.core.config import PROJECT_ROOT


def load_script(relative_path: str, module_name: str) -> ModuleType:
    """A fresh module from PROJECT_ROOT/relative_path, registered in sys.modules (dataclasses need that)."""
    spec = importlib.util.spec_from_file_location(module_name, PROJECT_ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
