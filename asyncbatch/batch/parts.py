"""Planning Batch API files: which input lines go in which part, and the state of each part's job."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from ..config import StatePaths
from ..errors import ConfigError
from ..input.requests import Job
from ..protocol import Api, batch_url
from ..store.files import replace_atomically

MAX_FILE_BYTES = 190 * 1024 * 1024  # Azure allows 200 MB; a margin for the multipart envelope


@dataclass
class Part:
    """One Batch API file and its job: the input lines it covers, as [first, last] runs."""

    index: int
    api: Api
    ranges: list[list[int]] = field(default_factory=list)
    lines: int = 0
    size: int = 0
    batch_id: str | None = None
    status: str | None = None
    tries: int = 0  # jobs created for it (a job refused for the queued-token limit is created again)
    retry_at: float = 0.0  # wall time before which it is not created again
    merged: bool = False
    offset: int = 0  # where its first line starts in the input: merging reads from there, not from the top

    def add(self, line_no: int, size: int) -> None:
        if self.ranges and self.ranges[-1][1] == line_no - 1:
            self.ranges[-1][1] = line_no
        else:
            self.ranges.append([line_no, line_no])
        self.lines += 1
        self.size += size

    def __contains__(self, line_no: object) -> bool:
        return isinstance(line_no, int) and any(a <= line_no <= b for a, b in self.ranges)

    def line_numbers(self) -> Iterator[int]:
        for first, last in self.ranges:
            yield from range(first, last + 1)


@dataclass
class BatchState:
    """The state directory's ``batches``: the run's id and its parts, replaced atomically whenever a job changes."""

    run: str
    parts: list[Part] = field(default_factory=list)

    def save(self, path: Path) -> None:
        replace_atomically(path, [orjson.dumps({"run": self.run, "parts": [asdict(p) for p in self.parts]})])

    @classmethod
    def load(cls, path: Path) -> BatchState | None:
        try:
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                data = orjson.loads(f.read())
        except FileNotFoundError:
            return None
        return cls(run=data["run"], parts=[Part(**p) for p in data["parts"]])

    def open_parts(self) -> list[Part]:
        return [p for p in self.parts if not p.merged]


class Splitter:
    """Where each request goes: one API per file, at most ``max_lines`` lines and ``max_bytes`` each."""

    def __init__(self, max_lines: int, max_bytes: int = MAX_FILE_BYTES, first_index: int = 0) -> None:
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.current: dict[Api, Part] = {}
        self.parts: list[Part] = []
        self.next_index = first_index

    def place(self, api: Api, line_no: int, size: int) -> Part:
        part = self.current.get(api)
        if part is None or part.lines >= self.max_lines or part.size + size > self.max_bytes:
            part = Part(index=self.next_index, api=api)
            self.next_index += 1
            self.current[api] = part
            self.parts.append(part)
        part.add(line_no, size)
        return part


def batch_line(job: Job, v1: bool = False) -> bytes:
    """A request as a Batch API input line; ``custom_id`` names the input line.

    :param v1: the job's endpoint is under ``/v1``: a line's url must be the job's endpoint.
    """
    line = {"custom_id": f"line-{job.line_no}", "method": "POST", "url": batch_url(job.api, v1), "body": job.body}
    return orjson.dumps(line) + b"\n"


def refuse_live_while_open(paths: StatePaths) -> None:
    """A live run while this run's Batch API jobs are open would pay twice for the lines they cover."""
    saved = BatchState.load(paths.batches)
    jobs = [p.batch_id for p in saved.open_parts() if p.batch_id] if saved else []
    if jobs:
        raise ConfigError(
            f"{len(jobs)} Batch API job(s) of this run are still open ({', '.join(jobs[:3])}); running the same lines "
            "live would pay for them twice. HINT: add --batch-api to collect their results (and run the rest "
            "live), or --batch-api --cancel to cancel them"
        )
