"""Job tests need the real Sisyphus and i6_core.

i6_core is found where users put it, ``recipe/i6_core`` (Sisyphus imports recipes from ``recipe/``), or anywhere on
the path. Outside CI a missing peer skips the job test modules with the reason; under ``CI=true`` it stops the run,
so CI never passes without exercising the Sisyphus half.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipe"
if (RECIPE / "i6_core").is_dir() and str(RECIPE) not in sys.path:
    sys.path.append(str(RECIPE))  # as Sisyphus' recipe import path does for `sis` runs

MISSING = [name for name in ("sisyphus", "i6_core") if importlib.util.find_spec(name) is None]
_HOW = "install Sisyphus from its git repository and clone i6_core as recipe/i6_core (see README)"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class _ModuleNeedingPeers(pytest.Module):
    """A test module that is not imported (its imports would fail) and is reported as skipped, with the reason."""

    def collect(self):
        pytest.skip(f"{' and '.join(MISSING)} not installed: {_HOW} to run the job tests", allow_module_level=True)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    if not MISSING or module_path.name == "__init__.py":
        return None
    if _in_ci():
        raise pytest.UsageError(f"CI=true, but {' and '.join(MISSING)} cannot be imported: {_HOW}")
    return _ModuleNeedingPeers.from_parent(parent, path=module_path)
