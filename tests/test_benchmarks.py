"""The benchmarks' own printing: figures a reader can take apart column by column."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_quota(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their helpers as siblings
    return importlib.import_module("bench_quota")


def test_bench_quota_columns_never_run_together_however_long_a_servers_name(bench_quota: ModuleType) -> None:
    stats = {"statuses": {"429": 7}, "requests": 700}
    minute = f"minute windows, {bench_quota.MINUTE_COUNTS} (1.30x), TPM 400,000"  # the row that ran on
    rows = [
        ("as estimated (1.00x)", "asyncbatch given", 101.0, 100.0, stats, "exit 0"),
        (minute, "asyncbatch adaptive", 130.0, 120.0, stats, "exit 0, 3 minute turns needed"),
    ]
    head, *lines = bench_quota.table(rows)
    client_at, span_end = head.rindex(" client") + 1, head.index("span s") + len("span s")
    for line, (server, client, span, *_) in zip(lines, rows, strict=True):
        assert line[:client_at].rstrip() == server and line[client_at - 2 : client_at] == "  "
        assert line[client_at:].startswith(client) and line[:span_end].split()[-1] == f"{span:.1f}"
