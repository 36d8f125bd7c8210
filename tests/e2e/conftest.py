"""Every test here runs ``kedro`` end to end in a scratch project: all of them are ``slow`` (CI runs them once)."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)
