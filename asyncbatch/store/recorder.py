"""Where every input's outcome goes, for the live and the Batch API phases alike.

One line in the results or in the errors file, handed to that file's single writer, and
counted once in the run's stats. The phases differ only in how they get their answers.
"""

from __future__ import annotations

from typing import Any

from ..stats import RunStats
from .writer import JsonlWriter


class Recorder:
    def __init__(self, results: JsonlWriter, errors: JsonlWriter, stats: RunStats) -> None:
        self.results, self.errors, self.stats = results, errors, stats

    def success(self, line_no: int, record: dict[str, Any], *, batch: bool = False) -> None:
        """A result line (``batch``: answered by a Batch API job)."""
        self.results.put(line_no, record)
        self.stats.count_success(batch=batch)

    def failure(self, line_no: int, record: dict[str, Any], code: str, *, bad_input: bool = False) -> None:
        """An error line, with its code (``bad_input``: a line that is not a request)."""
        self.errors.put(line_no, record)
        self.stats.count_failure(code, bad_input=bad_input)
