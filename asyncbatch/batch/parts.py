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
from ..protocol import APIS, Api, batch_url
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
        """The file as saved, or None if there is none.

        :raises ConfigError: a file that is not one this program wrote (damaged, or edited), naming it and what
            to do: its job ids are the only way back to jobs already paid for, so it is never written over.
        """
        try:
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                data = orjson.loads(f.read())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            run, parts = data["run"], data["parts"]
            if not isinstance(run, str) or not isinstance(parts, list):
                raise ValueError("no run id, or no list of parts")
            return cls(run=run, parts=[_part(p) for p in parts])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise ConfigError(
                f"the Batch API state file {path} is damaged ({_why(exc)}); it is left as "
                "it is. HINT: restore it from a backup to collect its jobs' results; or, to start over, move it aside "
                "(or run again with --restart): the lines it covered then run again, and are paid for again"
            ) from None

    def open_parts(self) -> list[Part]:
        return [p for p in self.parts if not p.merged]


_PART_TYPES: dict[str, type | tuple[type, ...]] = {
    "index": int,
    "api": str,
    "ranges": list,
    "lines": int,
    "size": int,
    "batch_id": (str, type(None)),
    "status": (str, type(None)),
    "tries": int,
    "retry_at": (int, float),
    "merged": bool,
    "offset": int,
}


def _why(exc: Exception) -> str:
    if isinstance(exc, orjson.JSONDecodeError):
        return "not JSON"
    return f"no {exc}" if isinstance(exc, KeyError) else str(exc)[:120] or type(exc).__name__


def _part(data: object) -> Part:
    """One part as saved. :raises ValueError: a field missing, unknown or of another type."""
    if not isinstance(data, dict) or set(data) - set(_PART_TYPES) or {"index", "api"} - set(data):
        raise ValueError("a part that is not one")
    if not all(isinstance(value, _PART_TYPES[name]) for name, value in data.items()) or data["api"] not in APIS:
        raise ValueError("a part with a field of the wrong type")
    if not all(isinstance(r, list) and len(r) == 2 and all(type(n) is int for n in r) for r in data["ranges"]):
        raise ValueError("a part whose line ranges are not pairs of numbers")
    if data.get("batch_id") == "":
        raise ValueError("a part whose job id is empty")
    return Part(**data)


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
