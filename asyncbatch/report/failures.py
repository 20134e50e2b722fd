"""The failures of a run, by error code, with a few examples each: read from its errors file, in bounded memory.

The errors file may be growing while it is read (a run in progress): a torn last line, or any line
that is not an error record of ours (or is longer than ``MAX_LINE``), is skipped. Codes are counted by
the summary's own rule (``stats.reason``: cut short, at most ``MAX_REASONS`` by name), so the page's
table and the summary name the same codes. Every text kept passes the run's redactor and is cut short:
the report shows it, and it came from a server or an input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..redact import Redactor
from ..stats import reason
from .reading import bounded_lines, open_regular

EXAMPLES = 3  # per code
MESSAGE_CHARS = 400
ID_CHARS = 200
# An error line holds the server's error body, and a 200 whose output broke the schema its whole answer
# (up to --max-response-mb, 16 MB by default): a line longer than this is skipped, not held.
MAX_LINE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Example:
    line: int | None  # the input line
    custom_id: str
    message: str


@dataclass
class Failures:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Example]] = field(default_factory=dict)
    skipped: int = 0  # lines that were not error records (a torn last one while a run writes), or too long

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, code: str, example: Example) -> None:
        code = reason(self.counts, code)
        self.counts[code] += 1
        kept = self.examples.setdefault(code, [])
        if len(kept) < EXAMPLES:
            kept.append(example)


def read_failures(path: Path, redactor: Redactor) -> Failures:
    """Every error record of ``path`` counted by its code; the first few of each kept, redacted and cut short.

    :raises ConfigError: something other than a regular file is at ``path`` (named).
    """
    failures = Failures()
    if (f := open_regular(path)) is None:
        return failures
    with f:
        for raw in bounded_lines(f, MAX_LINE):
            record = _record(raw) if raw is not None else None
            if record is None:
                failures.skipped += raw is None or raw.strip() != b""
                continue
            code, example = record
            failures.add(redactor.text(code), _redacted(example, redactor))
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
    return Example(example.line, redactor.text(example.custom_id)[:ID_CHARS], message)
