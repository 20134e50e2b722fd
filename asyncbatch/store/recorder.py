"""Where every input's outcome goes, for the live and the Batch API phases alike.

One line in the results or in the errors file, handed to that file's single writer, and
counted once in the run's stats. The phases differ only in how they get their answers.
Recording never raises: a record the encoder refuses becomes an ``unrecordable`` error line
with the line's ids, request id and usage (``records.unrecordable``), so a paid answer is
never lost and never paid for again by a resume.
"""

from __future__ import annotations

from typing import Any

from ..records import UNRECORDABLE, unrecordable
from ..stats import RunStats
from .writer import JsonlWriter


class Recorder:
    def __init__(self, results: JsonlWriter, errors: JsonlWriter, stats: RunStats) -> None:
        self.results, self.errors, self.stats = results, errors, stats

    def success(self, line_no: int, record: dict[str, Any], *, batch: bool = False) -> None:
        """A result line (``batch``: answered by a Batch API job)."""
        if self.results.put(line_no, record):
            self.stats.count_success(batch=batch)
        else:
            self._unrecordable(line_no, record)

    def failure(self, line_no: int, record: dict[str, Any], code: str, *, bad_input: bool = False) -> None:
        """An error line, with its code (``bad_input``: a line that is not a request)."""
        if self.errors.put(line_no, record):
            self.stats.count_failure(code, bad_input=bad_input)
        else:
            self._unrecordable(line_no, record)

    def _unrecordable(self, line_no: int, record: dict[str, Any]) -> None:
        fallback = unrecordable(record)
        if not self.errors.put(line_no, fallback):  # cannot happen (it holds plain text and counts): say so loudly
            raise AssertionError(f"line {line_no}: even the fallback error line could not be encoded")
        self.stats.count_failure(UNRECORDABLE)
