"""A quick sample of the cache boundary's fuzzing (tests/fuzz/cache.py); bench_fuzz.py runs thousands.

Each generated case is shrunk to its smallest form when it breaks an invariant; every case found that
way is kept below as an ``@example``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings

from asyncbatch.errors import ConfigError
from asyncbatch.store.cache import ResponseCache
from tests.fuzz.cache import Case, Checker, Edit, Templates, cases, fuzz
from tests.fuzz.report import FuzzReport


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checker]:
    yield Checker(Templates.build(tmp_path_factory.mktemp("cache-fuzz")), FuzzReport("cache"))


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases())
# A foreign database whose tables are only in its WAL, that WAL's first byte damaged: SQLite drops the
# WAL, and the main file alone looked like an empty database; it was taken, and written to. Now a
# table-less database beside a log that does not begin as one is refused as damaged.
@example(
    case=Case(
        base="users-wal",
        edits=(),
        wal="left",
        wal_edits=(Edit(kind="flip", at=0, length=1, seed=1),),
        mode="read-write",
        run=False,
        seed=1,
    )
)
# An older version's cache, zeros over a run of bytes inside an answer: SQLite's check passes and the
# entry, which carries no checksum, is given as it is now. Documented (docs/usage.md): only entries with
# a checksum are held to what was stored; the others are still refused where they are no longer answers.
@example(
    case=Case(
        base="legacy",
        edits=(Edit(kind="zero", at=449657, length=988, seed=83),),
        wal=None,
        wal_edits=(),
        mode="read-write",
        run=True,
        seed=0,
    )
)
def test_a_damaged_cache_file_is_used_or_refused_cleanly(case: Case, checker: Checker) -> None:
    checker.report = FuzzReport("cache")
    checker.check(case)
    assert checker.report.ok, checker.report.violations


def test_fuzz_counts_its_cases_and_checks_every_invariant() -> None:
    report = fuzz(25, seed=3)
    assert report.ok, report.violations
    assert report.cases == 25
    assert {"no_traceback", "named_refusal", "unchanged_on_refusal", "answers_valid"} <= set(report.checked)


def test_a_table_less_database_beside_a_log_that_is_not_one_is_refused_untouched(checker: Checker) -> None:
    case = Case("users-wal", (), "left", (Edit(kind="flip", at=0, length=1, seed=1),), "read-write", False, 1)
    path = checker.place(case)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"is damaged .*the write-ahead log beside it is not one SQLite can read"):
        ResponseCache(path)
    assert path.read_bytes() == before
