"""The failures of a run, by error code, with a few examples each: read from its errors file, in bounded memory.

The errors file may be growing while it is read (a run in progress): a torn last line, or any line
that is not an error record of ours, is skipped. Every text kept passes the run's redactor and is cut
short: the report shows it, and it came from a server or an input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..redact import Redactor

EXAMPLES = 3  # per code
MAX_CODES = 200  # distinct codes counted by name; the rest as "other codes"
MESSAGE_CHARS = 400
OTHER = "other codes"


@dataclass(frozen=True)
class Example:
    line: int | None  # the input line
    custom_id: str
    message: str


@dataclass
class Failures:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Example]] = field(default_factory=dict)
    skipped: int = 0  # lines that were not error records (a torn last one while a run writes)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, code: str, example: Example) -> None:
        if code not in self.counts and len(self.counts) >= MAX_CODES:
            code = OTHER
        self.counts[code] += 1
        kept = self.examples.setdefault(code, [])
        if len(kept) < EXAMPLES:
            kept.append(example)


def read_failures(path: Path, redactor: Redactor) -> Failures:
    """Every error record of ``path`` counted by its code; the first few of each kept, redacted and cut short."""
    failures = Failures()
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return failures
    with f:
        for raw in f:
            record = _record(raw)
            if record is None:
                failures.skipped += raw.strip() != b""
                continue
            code, example = record
            failures.add(redactor.text(code)[:100], _redacted(example, redactor))
    return failures


def _record(raw: bytes) -> tuple[str, Example] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = value.get("error") if isinstance(value, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return None
    line, custom_id, message = value.get("line"), value.get("custom_id"), error.get("message")
    return error["code"], Example(
        line if isinstance(line, int) and not isinstance(line, bool) else None,
        custom_id if isinstance(custom_id, str) else "",
        message if isinstance(message, str) else "",
    )


def _redacted(example: Example, redactor: Redactor) -> Example:
    message = redactor.text(example.message)
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + " …"
    return Example(example.line, redactor.text(example.custom_id)[:200], message)
