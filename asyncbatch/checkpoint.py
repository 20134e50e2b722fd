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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError
from .records import INVALID_INPUT, LINE

VERSION = 2


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


def fingerprint(options: Mapping[str, Any]) -> dict[str, str]:
    """A short hash of each request-shaping option, so a changed one can be named."""
    return {
        name: hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()
        for name, value in sorted(options.items())
    }


class PrefixHash:
    """A running hash of the input's first ``offset`` bytes: the part a run has read.

    The checkpoint keeps it, so a resume can tell an appended input (the prefix is
    the same: allowed) from a changed one. It advances by reading the input file
    itself from where it stopped, so the reader pays nothing per line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._hash = hashlib.blake2b(digest_size=16)

    def advance_to(self, offset: int) -> str:
        if offset > self.offset:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                left = offset - self.offset
                while left > 0 and (block := f.read(min(left, 1 << 20))):
                    self._hash.update(block)
                    left -= len(block)
            self.offset = offset
        return self._hash.hexdigest()

    @classmethod
    def matching(cls, path: Path, offset: int, expected: str) -> PrefixHash | None:
        """The hash at ``offset`` if the input's first ``offset`` bytes still hash to ``expected``."""
        prefix = cls(path)
        if path.stat().st_size < offset or prefix.advance_to(offset) != expected:
            return None
        return prefix


@dataclass
class ResumeState:
    """Where a run starts from, kept up to date by the writers as lines reach the files."""

    done: DoneSet = field(default_factory=DoneSet)
    results_offset: int = 0  # bytes of the results file that are accounted for in ``done``
    errors_offset: int = 0
    results_lines: int = 0
    errors_lines: int = 0
    ids_lines: int = 0  # input lines whose id digests the side file holds (see ids.py) ...
    input_offset: int = 0  # ... and the input bytes they take
    prefix: PrefixHash | None = None  # the hash of those bytes, verified
    resent: int = 0  # lines sent but not recorded when the last run stopped: sent again now
    changed: list[str] = field(default_factory=list)  # options changed since the last run, and accepted
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

    def snapshot(self, fingerprint: dict[str, str], ids: tuple[int, int], prefix: PrefixHash) -> Checkpoint:
        """The checkpoint now; ``ids`` is (input lines read, their bytes), from the id log."""
        return Checkpoint(
            fingerprint=fingerprint,
            done=self.done,
            results_offset=self.results_offset,
            errors_offset=self.errors_offset,
            results_lines=self.results_lines,
            errors_lines=self.errors_lines,
            ids_lines=ids[0],
            input_offset=ids[1],
            input_hash=prefix.advance_to(ids[1]),
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
    input_offset: int
    input_hash: str

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
                "input_offset": self.input_offset,
                "input_hash": self.input_hash,
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
        ints = ("results_offset", "errors_offset", "results_lines", "errors_lines", "ids_lines", "input_offset")
        if not all(type(data[k]) is int and data[k] >= 0 for k in ints) or not _is_fingerprint(data["fingerprint"]):
            raise CheckpointUnreadable("a field has the wrong type")
        if not isinstance(data["input_hash"], str):
            raise CheckpointUnreadable("a field has the wrong type")
        try:
            done = DoneSet.decode(data["done"])
        except (TypeError, ValueError, zlib.error):
            raise CheckpointUnreadable("its done-set is damaged") from None
        return cls(**{**{k: data[k] for k in fields}, "done": done})


def _is_fingerprint(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


class SentJournal:
    """Which input lines were sent and are not yet recorded, so a resumed run can say how many it sends again.

    An append-only file of 4-byte line numbers beside the checkpoint: one is
    appended (a single ``write``, so it survives ``kill -9``) whenever a request
    goes out, and at every checkpoint the file is cut back to the lines still
    unrecorded (in flight, or answered and waiting for the writer). On resume,
    the lines in it that no output records were sent but never recorded: they
    are sent again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unrecorded: set[int] = set()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @staticmethod
    def unrecorded_in(path: Path, done: DoneSet) -> int:
        """Lines the journal at ``path`` holds that ``done`` does not: requests that were lost."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0
        lines = array("I")
        lines.frombytes(raw[: len(raw) - len(raw) % 4])
        return sum(1 for n in set(lines) if n not in done)

    def sent(self, line_no: int) -> None:
        if line_no not in self.unrecorded:
            self.unrecorded.add(line_no)
            os.write(self._fd, line_no.to_bytes(4, "little"))

    def recorded(self, lines: list[int]) -> None:
        self.unrecorded.difference_update(lines)

    def reset(self) -> None:
        """At a checkpoint: only what is still unrecorded."""
        os.ftruncate(self._fd, 0)
        if self.unrecorded:
            os.write(self._fd, array("I", sorted(self.unrecorded)).tobytes())

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


ROUTING = frozenset({"deployment"})  # a pool leaves it out: compared only when both runs name one


def changed_parts(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    names = (set(old) | set(new)) - (ROUTING - (set(old) & set(new)))
    return sorted(k for k in names if old.get(k) != new.get(k))


def recover(
    input_path: Path,
    results: Path,
    errors: Path,
    checkpoint: Path,
    expected: Mapping[str, str],
    *,
    accept_changes: bool = False,
) -> ResumeState:
    """Rebuild the resume state from the outputs, using the checkpoint when it can be trusted.

    The input may have grown (lines appended) but what was read of it must be
    unchanged. Changed options (``expected`` against the checkpoint's) proceed
    with a note while nothing has succeeded, or with ``accept_changes``; otherwise
    ConfigError names them. Either way, lines recorded only as bad input are
    looked at again, since the options may be what made them bad.
    ``resent`` counts the lines the sent-journal holds that no output records.
    """
    state = ResumeState()
    for path in (results, errors):
        if cut := cut_torn_tail(path):
            state.notes.append(f"cut a torn last line ({cut} bytes) from {path}")
    sizes = [p.stat().st_size if p.exists() else 0 for p in (results, errors)]
    saved = _usable_checkpoint(checkpoint, state, sizes)
    if saved is not None:
        _check_input(input_path, saved, state)
    if saved is not None and sizes[0] >= saved.results_offset and sizes[1] >= saved.errors_offset:
        state.done = saved.done
        state.results_offset, state.errors_offset = saved.results_offset, saved.errors_offset
        state.results_lines, state.errors_lines = saved.results_lines, saved.errors_lines
        state.ids_lines, state.input_offset = saved.ids_lines, saved.input_offset
        state.source = "checkpoint"
    elif sizes != [0, 0]:
        state.source = "rebuilt"
        if saved is not None:
            state.notes.append("the checkpoint is behind a damaged output: rebuilding the state from the outputs")
    state.results_lines += sum(1 for _ in scan(results, state.results_offset, state.done))
    state.errors_lines += sum(1 for _ in scan(errors, state.errors_offset, state.done))
    state.results_offset, state.errors_offset = sizes
    if saved is not None and (changed := changed_parts(saved.fingerprint, expected)):
        _accept_changes(changed, state, checkpoint, accept_changes)
        if dropped := drop_errors(errors, checkpoint, state, lambda code: code == INVALID_INPUT):
            state.notes.append(f"{dropped} lines recorded as bad input are looked at again with the new options")
    state.resent = SentJournal.unrecorded_in(journal_path(checkpoint), state.done)
    return state


def _usable_checkpoint(checkpoint: Path, state: ResumeState, sizes: list[int]) -> Checkpoint | None:
    try:
        return load_checkpoint(checkpoint)
    except CheckpointUnreadable as exc:
        if sizes != [0, 0]:
            state.notes.append(f"checkpoint {checkpoint} not used ({exc}): rebuilding the state from the outputs")
        return None


def _check_input(input_path: Path, saved: Checkpoint, state: ResumeState) -> None:
    """What was read of the input must be byte for byte the same; lines may have been appended."""
    prefix = PrefixHash.matching(input_path, saved.input_offset, saved.input_hash)
    if prefix is None:
        raise ConfigError(
            f"cannot resume: {input_path} changed: its first {saved.input_offset:,} bytes, which the last run "
            "already read, are not the same (appending lines is fine; editing or reordering them is not). "
            "HINT: restore the original input, or pass --restart to start over (the old outputs are kept beside it)"
        )
    state.prefix = prefix


def _accept_changes(changed: list[str], state: ResumeState, checkpoint: Path, accept: bool) -> None:
    names = ", ".join(changed)
    if state.results_lines == 0:
        state.notes.append(f"{names} changed since the last run, which had no successes: going on with the new options")
        return
    if not accept:
        raise ConfigError(
            f"cannot resume: {names} changed since the checkpoint {checkpoint} was written, and "
            f"{state.results_lines:,} results were made with the old options. HINT: run the original options "
            "again; or pass --accept-changes to run the remaining lines with the new ones (the results file "
            "will mix the two); or --restart to start over (the old outputs are kept beside it)"
        )
    state.changed = changed
    state.notes.append(
        f"--accept-changes: the remaining lines run with the new {names}; the results file mixes the two"
    )


def drop_errors(errors: Path, checkpoint: Path, state: ResumeState, drop: Callable[[str], bool]) -> int:
    """Remove the error lines whose code ``drop`` picks, crash-safely, so those inputs run again.

    The checkpoint goes first, so a crash at any point leaves the outputs as the
    only truth: either the old errors file (the failures stay recorded) or the
    new one (they are not done, and run again).
    """
    if not errors.exists():
        return 0
    checkpoint.unlink(missing_ok=True)
    tmp = errors.with_name(f"{errors.name}.tmp")
    dropped = 0
    with errors.open("rb") as src, tmp.open("wb") as dst:
        for raw in src:
            record = orjson.loads(raw)
            if drop(str((record.get("error") or {}).get("code"))):
                state.done.discard(int(record[LINE]))
                dropped += 1
            else:
                dst.write(raw)
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
