"""Job tests need the real Sisyphus and i6_core; without them the folder is skipped with the reason."""

import importlib.util

import pytest

_missing = [name for name in ("sisyphus", "i6_core") if importlib.util.find_spec(name) is None]


def pytest_collection_modifyitems(config, items):
    if not _missing:
        return
    reason = (
        f"{' and '.join(_missing)} not installed: install Sisyphus and i6_core from their git repositories "
        "(see README) to run the job tests"
    )
    for item in items:
        if "tests/jobs/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.skip(reason=reason))
