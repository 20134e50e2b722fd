"""Resume state: which input lines are done, and a checkpoint that makes resuming fast.

The results and errors files are the source of truth: every line in them names
its input ``line``. The checkpoint is a cache over them (a bitmap of done line
numbers, the byte offsets up to which the files were read, and a fingerprint of
the run), replaced atomically. On resume:

1. a torn last line in either output (kill -9 mid-write) is cut off;
2. if the checkpoint is usable (same fingerprint, both files at least as long as
   it says), only the bytes written after it are scanned;
3. otherwise the state is rebuilt by scanning both outputs from the start.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import time
import zlib
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError
from .records import INVALID_INPUT, LINE

VERSION = 2
_PROBE = 1 << 20  # bytes hashed at each end of the input for its fingerprint


class DoneSet:
    """A growable bitmap of input line numbers: 1M lines cost 125 kB."""

    def __init__(self, bits: bytes = b"") -> None:
        self._bits = bytearray(bits)
        self.count = sum(b.bit_count() for b in self._bits)

    def add(self, line_no: int) -> None:
        byte, bit = divmod(line_no, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte - len(self._bits) + 1 + len(self._bits) // 2))
        if not self._bits[byte] & (1 << bit):
            self._bits[byte] |= 1 << bit
            self.count += 1

    def discard(self, line_no: int) -> None:
        byte, bit = divmod(line_no, 8)
        if byte < len(self._bits) and self._bits[byte] & (1 << bit):
            self._bits[byte] &= ~(1 << bit) & 0xFF
            self.count -= 1

    def __contains__(self, line_no: object) -> bool:
        if not isinstance(line_no, int):
            return False
        byte, bit = divmod(line_no, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))

    def __len__(self) -> int:
        return self.count

    def encode(self) -> str:
        return base64.b64encode(zlib.compress(bytes(self._bits), 1)).decode()

    @classmethod
    def decode(cls, text: str) -> DoneSet:
        return cls(zlib.decompress(base64.b64decode(text)))


def fingerprint(input_path: Path, options: Mapping[str, Any]) -> dict[str, str]:
    """The input's identity (size, and a hash of its first and last MiB) and the request-shaping options."""
    size = input_path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with input_path.open("rb") as f:
        digest.update(f.read(_PROBE))
        if size > _PROBE:
            f.seek(max(_PROBE, size - _PROBE))
            digest.update(f.read(_PROBE))
    parts = {"input": f"{size} bytes, {digest.hexdigest()}"}
    for name, value in sorted(options.items()):
        parts[name] = hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()
    return parts


@dataclass
class ResumeState:
    """Where a run starts from, kept up to date by the writers as lines reach the files."""

    done: DoneSet = field(default_factory=DoneSet)
    results_offset: int = 0  # bytes of the results file that are accounted for in ``done``
    errors_offset: int = 0
    results_lines: int = 0
    errors_lines: int = 0
    ids_lines: int = 0  # input lines whose id digests the side file holds (see ids.py)
    resent: int = 0  # lines sent but not recorded when the last run stopped: sent again now
    source: str = "fresh"  # fresh | checkpoint | rebuilt
    notes: list[str] = field(default_factory=list)

    def on_results(self, lines: list[int], nbytes: int) -> None:
        """A results batch reached the file (the writer's callback)."""
        for line_no in lines:
            self.done.add(line_no)
        self.results_offset += nbytes
        self.results_lines += len(lines)

    def on_errors(self, lines: list[int], nbytes: int) -> None:
        for line_no in lines:
            self.done.add(line_no)
        self.errors_offset += nbytes
        self.errors_lines += len(lines)

    def snapshot(self, fingerprint: dict[str, str], ids_lines: int) -> Checkpoint:
        return Checkpoint(
            fingerprint=fingerprint,
            done=self.done,
            results_offset=self.results_offset,
            errors_offset=self.errors_offset,
            results_lines=self.results_lines,
            errors_lines=self.errors_lines,
            ids_lines=ids_lines,
        )


class CheckpointUnreadable(Exception):
    """The checkpoint cannot be used; the state is rebuilt from the outputs."""


@dataclass
class Checkpoint:
    """The checkpoint file's contents. Any field missing, unknown or of the wrong type makes it unreadable."""

    fingerprint: dict[str, str]
    done: DoneSet
    results_offset: int
    errors_offset: int
    results_lines: int
    errors_lines: int
    ids_lines: int

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "version": VERSION,
                "fingerprint": self.fingerprint,
                "done": self.done.encode(),
                "results_offset": self.results_offset,
                "errors_offset": self.errors_offset,
                "results_lines": self.results_lines,
                "errors_lines": self.errors_lines,
                "ids_lines": self.ids_lines,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        """:raises CheckpointUnreadable: with the reason."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CheckpointUnreadable("it is not JSON") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise CheckpointUnreadable("it was written by another version of asyncbatch")
        fields = {f.name for f in dataclasses.fields(cls)}
        if problems := sorted(fields ^ (set(data) - {"version"})):
            raise CheckpointUnreadable(f"fields missing or unknown: {', '.join(problems)}")
        ints = ("results_offset", "errors_offset", "results_lines", "errors_lines", "ids_lines")
        if not all(type(data[k]) is int and data[k] >= 0 for k in ints) or not _is_fingerprint(data["fingerprint"]):
            raise CheckpointUnreadable("a field has the wrong type")
        try:
            done = DoneSet.decode(data["done"])
        except (TypeError, ValueError, zlib.error):
            raise CheckpointUnreadable("its done-set is damaged") from None
        return cls(**{**{k: data[k] for k in fields}, "done": done})


def _is_fingerprint(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


class SentJournal:
    """Which input lines have a request out, so a resumed run can say how many it sends again.

    An append-only file of 4-byte line numbers beside the checkpoint: one is
    appended (a single ``write``, so it survives ``kill -9``) whenever a request
    goes out, and at every checkpoint the file is cut back to the lines still
    in flight. On resume, the lines in it that no output records were sent
    but never recorded: they are sent again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @staticmethod
    def unrecorded(path: Path, done: DoneSet) -> int:
        """Lines the journal at ``path`` holds that ``done`` does not: requests that were lost."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0
        lines = array("I")
        lines.frombytes(raw[: len(raw) - len(raw) % 4])
        return sum(1 for n in set(lines) if n not in done)

    def sent(self, line_no: int) -> None:
        os.write(self._fd, line_no.to_bytes(4, "little"))

    def reset(self, in_flight: set[int]) -> None:
        """At a checkpoint: only what is still in flight."""
        os.ftruncate(self._fd, 0)
        if in_flight:
            os.write(self._fd, array("I", sorted(in_flight)).tobytes())

    def close(self) -> None:
        os.close(self._fd)


def journal_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".sent")


def cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; return the bytes cut (0 if none or no file)."""
    if not path.exists():
        return 0
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


def scan(path: Path, offset: int, done: DoneSet) -> Iterator[tuple[int, dict[str, Any]]]:
    """Add the input line of every record after ``offset`` to ``done``; yield (line, record)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            try:
                record = orjson.loads(raw)
                line_no = int(record[LINE])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"{path} holds a line that is not an asyncbatch record near byte {f.tell()}. "
                    "HINT: move the file aside or pass --restart"
                ) from None
            done.add(line_no)
            yield line_no, record


def load_checkpoint(path: Path) -> Checkpoint:
    """:raises CheckpointUnreadable: no file, or one that cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointUnreadable("there is none") from None
    except OSError as exc:
        raise CheckpointUnreadable(f"it cannot be read ({exc.strerror})") from None
    return Checkpoint.from_bytes(raw)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomic replace: a reader sees the old checkpoint or the new one, never half of one."""
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(checkpoint.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def changed_parts(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def recover(results: Path, errors: Path, checkpoint: Path, expected: Mapping[str, str]) -> ResumeState:
    """Rebuild the resume state from the outputs, using the checkpoint when it can be trusted.

    ``resent`` counts the lines the sent-journal holds that no output records.
    """
    state = ResumeState()
    for path in (results, errors):
        if cut := cut_torn_tail(path):
            state.notes.append(f"cut a torn last line ({cut} bytes) from {path}")
    sizes = [p.stat().st_size if p.exists() else 0 for p in (results, errors)]
    try:
        saved: Checkpoint | None = load_checkpoint(checkpoint)
    except CheckpointUnreadable as exc:
        saved = None
        if sizes != [0, 0]:
            state.notes.append(f"checkpoint {checkpoint} not used ({exc}): rebuilding the state from the outputs")
    if saved is not None and (changed := changed_parts(saved.fingerprint, expected)):
        raise ConfigError(
            f"cannot resume: {', '.join(changed)} changed since the checkpoint {checkpoint} was written. "
            "HINT: run the original input and options again, or pass --restart to start over "
            "(the old outputs are kept beside it)"
        )
    if saved is not None and sizes[0] >= saved.results_offset and sizes[1] >= saved.errors_offset:
        state.done = saved.done
        state.results_offset, state.errors_offset = saved.results_offset, saved.errors_offset
        state.results_lines, state.errors_lines = saved.results_lines, saved.errors_lines
        state.ids_lines = saved.ids_lines
        state.source = "checkpoint"
    elif sizes != [0, 0]:
        state.source = "rebuilt"
        if saved is not None:
            state.notes.append("the checkpoint is behind a damaged output: rebuilding the state from the outputs")
    state.results_lines += sum(1 for _ in scan(results, state.results_offset, state.done))
    state.errors_lines += sum(1 for _ in scan(errors, state.errors_offset, state.done))
    state.results_offset, state.errors_offset = sizes
    state.resent = SentJournal.unrecorded(journal_path(checkpoint), state.done)
    return state


def drop_failures(errors: Path, checkpoint: Path, state: ResumeState) -> int:
    """For --retry-failed: remove the failed requests' lines from the errors file, crash-safely.

    The checkpoint goes first, so a crash at any point leaves the outputs as the
    only truth: either the old errors file (the failures stay recorded) or the
    new one (they are not done, and run again). Bad input lines stay: they
    would fail the same way again.
    """
    if not errors.exists():
        return 0
    checkpoint.unlink(missing_ok=True)
    tmp = errors.with_name(f"{errors.name}.tmp")
    dropped = 0
    with errors.open("rb") as src, tmp.open("wb") as dst:
        for raw in src:
            record = orjson.loads(raw)
            if (record.get("error") or {}).get("code") == INVALID_INPUT:
                dst.write(raw)
            else:
                state.done.discard(int(record[LINE]))
                dropped += 1
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, errors)
    state.errors_lines -= dropped
    state.errors_offset = errors.stat().st_size
    return dropped


def move_aside(paths: list[Path]) -> list[tuple[Path, Path]]:
    """Rename existing files to ``<name>.<timestamp>.old`` (for --restart); never delete."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for path in paths:
        if path.exists():
            target = path.with_name(f"{path.name}.{stamp}.old")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"{path.name}.{stamp}-{n}.old")
            os.replace(path, target)
            moved.append((path, target))
    return moved
