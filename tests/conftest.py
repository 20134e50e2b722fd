"""Shared fixtures: an isolated environment, input writers and output readers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No property is judged by the clock: a loaded machine (CI on two cores) made a case "too slow" and failed it
settings.register_profile("asyncbatch", deadline=None)
settings.load_profile("asyncbatch")

ENV_VARS = (
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_API_VERSION",
    "AZURE_OPENAI_DEPLOYMENT_NAME",
    "AZURE_OPENAI_AD_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "OPENAI_API_VERSION",
    *(f"{name}_proxy" for name in ("https", "http", "all", "no")),  # a developer's own proxy routes no test
    *(f"{name}_PROXY" for name in ("HTTPS", "HTTP", "ALL", "NO")),
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No real keys leak in, and no stray .env is read: every test runs in its own empty directory."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    yield


# The tests that start a framework (Ray, Spark, a browser) take tens of seconds each, mostly waiting on it:
# they go first, so the rest of the suite runs beside them instead of after them.
STARTS_FIRST = ("tests/test_ray.py", "tests/test_spark.py", "tests/test_report.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(STARTS_FIRST))  # stable: the rest keep their order
