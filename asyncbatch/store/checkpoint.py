"""Resume state: which input lines are done, and a checkpoint that makes resuming fast.

The results and errors files are the source of truth: every line in them names
its input ``line`` and carries a digest of that line's content (``line_hash``).
The checkpoint is a cache over them (a bitmap of done line numbers, the byte
offsets up to which the files were read, a fingerprint of the run, the hash of
the input bytes read, and which outputs it describes), replaced atomically. On
resume:

1. if the checkpoint is usable (these outputs, both files at least as long as it
   says, the input's first bytes as read), only the bytes written after it are
   scanned; otherwise both outputs are scanned from the start;
2. a record of a line the checkpoint vouches for counts by its line number; any
   other is matched to an input line by content as the input is read, so lines
   inserted or moved are neither lost nor sent twice;
3. only once every scanned line proved to be a record is a torn last line
   (kill -9 mid-write) cut off. A file that is not ours is refused untouched.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..config import Outputs
from ..errors import ACCEPT_CHANGES, OUTPUT_PATH, RESTART, RETRY_FAILED, ConfigError
from ..input.ids import line_digest
from ..input.reader import BOM, TABLES
from ..records import INVALID_INPUT, LINE, LINE_HASH
from .files import cut, looks_like_record, open_private, replace_atomically, torn_tail, write_all
from .ids import DigestBag

VERSION = 4
# A record's line number is one our writer wrote: an int up to this. A larger one (or -1, "7", true, 1e400) is damage:
# taken as it is, it marked another line done (-1: the bitmap's last byte) or sized a bitmap of many gigabytes.
MAX_LINE = 10**9
READABLE = frozenset({3, VERSION})  # version 3 (main's until the input's path was kept) has no ``input``


class DoneSet:
    """A growable bitmap of input line numbers: 1M lines cost 125 kB."""

    def __init__(self, bits: bytes = b"") -> None:
        self._bits = bytearray(bits)
        self.count = sum(b.bit_count() for b in self._bits)
        self.unplaced = DigestBag()  # digests of recorded lines not known by number: matched by content

    def claim(self, line_no: int, line_hash: int) -> bool:
        """Whether line ``line_no`` (of content digest ``line_hash``) is done, matching it to an unplaced record."""
        if line_no in self:
            return True
        if self.unplaced.count and self.unplaced.take(line_hash):
            self.add(line_no)
            return True
        return False

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
        """:raises ValueError: not a done-set this version wrote (longer than ``MAX_LINE`` bits once inflated)."""
        inflate = zlib.decompressobj()
        bits = inflate.decompress(base64.b64decode(text), MAX_LINE // 8 + 1)
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError("not a whole done-set of at most MAX_LINE lines")
        return cls(bits)


class PrefixHash:
    """The hash of the input's first ``offset`` bytes: the part a run read (the reader keeps it, ids.IdLog)."""

    @staticmethod
    def matching(path: Path, offset: int, expected: str, lines: Lines | None = None) -> Any:
        """The running hash at ``offset`` if the input's first ``offset`` bytes still hash to ``expected``.

        :param lines: the input's lines as the reader reads them, for an input that is not its own bytes
            (a Parquet file's rows as JSON lines); by default, the file's bytes.
        """
        prefix = hashlib.blake2b(digest_size=16)
        left = offset
        for block in lines(path) if lines is not None else _blocks(path):
            if left <= 0:
                break
            prefix.update(block[:left])
            left -= min(len(block), left)
        return prefix if left == 0 and prefix.hexdigest() == expected else None


Lines = Callable[[Path], Iterable[bytes]]


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            yield block


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
    prefix: Any = None  # the hash of those bytes, verified
    trusted_lines: int = 0  # records of lines up to this one count by number; later ones by content
    resent: int = 0  # lines sent but not recorded when the last run stopped: sent again now
    changed: list[str] = field(default_factory=list)  # options changed since the last run, and accepted
    input: str | None = None  # the input's resolved path: whose outputs these are
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

    def place(self, record: dict[str, Any]) -> None:
        """A record found in an output: done by its line number, or by content once its line is read."""
        line_no, line_hash = int(record[LINE]), _line_hash(record)
        if line_no <= self.trusted_lines or line_hash is None:
            self.done.add(line_no)  # vouched for by the checkpoint; or a record without a digest
        else:
            self.done.unplaced.add(line_hash)

    def forget(self, record: dict[str, Any]) -> None:
        """Undo ``place``: the record is being removed, its line is to run again."""
        line_no, line_hash = int(record[LINE]), _line_hash(record)
        if line_no <= self.trusted_lines or line_hash is None or not self.done.unplaced.take(line_hash):
            self.done.discard(line_no)

    def snapshot(self, fingerprint: dict[str, str], ids: tuple[int, int, str], outputs: list[str]) -> Checkpoint:
        """The checkpoint now; ``ids`` is (input lines read, their bytes, their hash), from the id log."""
        return Checkpoint(
            fingerprint=fingerprint,
            done=self.done,
            results_offset=self.results_offset,
            errors_offset=self.errors_offset,
            results_lines=self.results_lines,
            errors_lines=self.errors_lines,
            ids_lines=ids[0],
            input_offset=ids[1],
            input_hash=ids[2],
            outputs=outputs,
            input=self.input,
        )


def _line_hash(record: dict[str, Any]) -> int | None:
    value = record.get(LINE_HASH)
    try:
        return int(value, 16) if isinstance(value, str) and value else None
    except ValueError:
        return None


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
    outputs: list[str] | None = None  # the resolved results and errors paths it describes
    input: str | None = None  # the resolved input path they answer (None: version 3)

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
                "outputs": self.outputs,
                "input": self.input,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        """:raises CheckpointUnreadable: with the reason."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CheckpointUnreadable("it is not JSON") from None
        if not isinstance(data, dict) or data.get("version") not in READABLE:
            raise CheckpointUnreadable("it was written by another version of asyncbatch")
        fields = {f.name for f in dataclasses.fields(cls)}
        if data["version"] == 3:
            data["input"] = None
        if problems := sorted(fields ^ (set(data) - {"version"})):
            raise CheckpointUnreadable(f"fields missing or unknown: {', '.join(problems)}")
        ints = ("results_offset", "errors_offset", "results_lines", "errors_lines", "ids_lines", "input_offset")
        if not all(type(data[k]) is int and data[k] >= 0 for k in ints) or not _is_fingerprint(data["fingerprint"]):
            raise CheckpointUnreadable("a field has the wrong type")
        outputs = data["outputs"]
        if not isinstance(data["input_hash"], str) or not (outputs is None or _is_strings(outputs)):
            raise CheckpointUnreadable("a field has the wrong type")
        if not (data["input"] is None or isinstance(data["input"], str)):
            raise CheckpointUnreadable("a field has the wrong type")
        try:
            done = DoneSet.decode(data["done"])
        except (TypeError, ValueError, zlib.error):
            raise CheckpointUnreadable("its done-set is damaged") from None
        return cls(**{**{k: data[k] for k in fields}, "done": done})


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_fingerprint(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


class SentJournal:
    """Which input lines were sent and are not yet recorded, so a resumed run can say how many it sends again.

    An append-only file of 4-byte line numbers in the state directory: one is
    appended (a single ``write``, so it survives ``kill -9``) whenever a request
    goes out, and at every checkpoint the file is cut back to the lines still
    unrecorded (in flight, or answered and waiting for the writer). On resume,
    the lines in it that no output records were sent but never recorded: they
    are sent again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unrecorded: set[int] = set()
        self._fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @staticmethod
    def unrecorded_in(path: Path, done: DoneSet) -> int:
        """Lines the journal at ``path`` holds that ``done`` does not: requests that were lost."""
        try:
            fd = open_private(path, os.O_RDONLY)
        except (OSError, ConfigError):
            return 0
        with os.fdopen(fd, "rb") as f:
            raw = f.read()
        lines = array("I")
        lines.frombytes(raw[: len(raw) - len(raw) % 4])
        return max(0, sum(1 for n in set(lines) if n not in done) - done.unplaced.count)

    def sent(self, line_no: int) -> None:
        if line_no not in self.unrecorded:
            self.unrecorded.add(line_no)
            write_all(self._fd, line_no.to_bytes(4, "little"), self.path)

    def recorded(self, lines: list[int]) -> None:
        self.unrecorded.difference_update(lines)

    def reset(self) -> None:
        """At a checkpoint: only what is still unrecorded."""
        os.ftruncate(self._fd, 0)
        if self.unrecorded:
            write_all(self._fd, array("I", sorted(self.unrecorded)).tobytes(), self.path)

    def close(self) -> None:
        os.close(self._fd)


def scan(path: Path, offset: int, end: int) -> Iterator[dict[str, Any]]:
    """Every record of ``path`` between byte ``offset`` and ``end``.

    :raises ConfigError: a line is not an asyncbatch record (nothing has been changed).
    """
    if end <= offset:
        return
    with path.open("rb") as f:
        f.seek(offset)
        at = offset
        while at < end and (raw := f.readline()):
            at += len(raw)
            try:
                record = orjson.loads(raw)
                if not (type(record[LINE]) is int and 0 <= record[LINE] <= MAX_LINE):
                    raise ValueError("no input line has that number")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"{path} holds a line that is not an asyncbatch record near byte {at}; it is left as it is. "
                    f"HINT: choose another output name, or move the file aside (or start over with {RESTART})"
                ) from None
            yield record


def load_checkpoint(path: Path) -> Checkpoint:
    """:raises CheckpointUnreadable: no file, or one that cannot be used."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointUnreadable("there is none") from None
    except OSError as exc:
        raise CheckpointUnreadable(f"it cannot be read ({exc.strerror})") from None
    return Checkpoint.from_bytes(raw)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomic replace: a reader sees the old checkpoint or the new one, never half of one."""
    replace_atomically(path, [checkpoint.to_bytes()])


ROUTING = frozenset({"deployment"})  # a pool leaves it out: compared only when both runs name one


def changed_parts(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    names = (set(old) | set(new)) - (ROUTING - (set(old) & set(new)))
    return sorted(k for k in names if old.get(k) != new.get(k))


def recover(
    input_path: Path,
    outputs: Outputs,
    expected: Mapping[str, str],
    *,
    accept_changes: bool = False,
    retry_failed: bool = False,
    input_lines: Lines | None = None,
    input_rows: Lines | None = None,
) -> ResumeState:
    """Rebuild the resume state from the outputs, using the checkpoint when it can be trusted.

    The input may have grown (lines appended) but what was read of it must be
    unchanged, except lines recorded only as bad input (with ``retry_failed``, any
    failed line), which may be corrected in place and run again. Changed options
    (``expected`` against the checkpoint's) proceed with a note while nothing has
    succeeded, or with ``accept_changes``; otherwise ConfigError names them. Either
    way, lines recorded only as bad input are looked at again, since the options may
    be what made them bad.
    ``resent`` counts the lines the sent-journal holds that no output records.
    """
    state, paths, results, errors = (
        ResumeState(input=str(input_path.resolve())),
        outputs.state,
        outputs.results,
        outputs.errors,
    )
    tails = [_own_tail(path) for path in (results, errors)]
    sizes = [_size(path) - tail for path, tail in zip((results, errors), tails, strict=True)]
    saved = _usable_checkpoint(paths.checkpoint, state, sizes, outputs.identity())
    edited: set[int] = set()
    if saved is not None:
        outputs_now = (results, errors)
        edited = _check_input(input_path, saved, state, outputs_now, sizes, retry_failed, input_lines, input_rows)
    if saved is not None and sizes[0] >= saved.results_offset and sizes[1] >= saved.errors_offset:
        state.done = saved.done
        state.results_offset, state.errors_offset = saved.results_offset, saved.errors_offset
        state.results_lines, state.errors_lines = saved.results_lines, saved.errors_lines
        state.ids_lines, state.input_offset = saved.ids_lines, saved.input_offset
        state.trusted_lines = saved.ids_lines  # every recorded line's number holds: compared if the input changed
        if state.prefix is None:  # lines were corrected in place: the id log is read again from the input
            state.ids_lines = state.input_offset = 0
        state.source = "checkpoint"
    elif sizes != [0, 0]:
        state.source = "rebuilt"
        state.prefix = None
        if saved is not None:
            state.notes.append("the checkpoint is behind a damaged output: rebuilding the state from the outputs")
    for path, size, lines in ((results, sizes[0], "results_lines"), (errors, sizes[1], "errors_lines")):
        offset = state.results_offset if path is results else state.errors_offset
        for record in scan(path, offset, size):
            state.place(record)
            setattr(state, lines, getattr(state, lines) + 1)
    state.results_offset, state.errors_offset = sizes
    for path, tail in zip((results, errors), tails, strict=True):  # every line before it is a record: ours
        if tail:
            cut(path, tail)
            state.notes.append(f"cut a torn last line ({tail} bytes) from {path}")
    if edited and (dropped := drop_errors(errors, paths.checkpoint, state, lambda r: int(r[LINE]) in edited)):
        state.notes.append(f"{dropped} failed lines corrected in place in {input_path}: they run again")
    if saved is not None and (changed := changed_parts(saved.fingerprint, expected)):
        _accept_changes(changed, state, paths.checkpoint, accept_changes)
        if dropped := drop_errors(errors, paths.checkpoint, state, lambda record: _code(record) == INVALID_INPUT):
            state.notes.append(f"{dropped} lines recorded as bad input are looked at again with the new options")
    state.resent = SentJournal.unrecorded_in(paths.sent, state.done)
    return state


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _own_tail(path: Path) -> int:
    """The bytes after the last newline, if they could be a record of ours cut short; else ConfigError."""
    tail = torn_tail(path)
    if tail and not looks_like_record(path, tail):
        raise ConfigError(
            f"{path} is not an asyncbatch output (its last line is not a record); it is left as it is. "
            "HINT: choose another output name, or move the file aside"
        )
    return tail


def _usable_checkpoint(checkpoint: Path, state: ResumeState, sizes: list[int], outputs: list[str]) -> Checkpoint | None:
    try:
        saved = load_checkpoint(checkpoint)
    except CheckpointUnreadable as exc:
        if sizes != [0, 0]:
            state.notes.append(f"checkpoint {checkpoint} not used ({exc}): rebuilding the state from the outputs")
        return None
    if saved.outputs is not None and saved.outputs != outputs:
        state.notes.append(f"checkpoint {checkpoint} describes other outputs: rebuilding the state from these")
        return None
    return saved


def _check_input(
    input_path: Path,
    saved: Checkpoint,
    state: ResumeState,
    outputs: tuple[Path, Path],
    sizes: list[int],
    retry_failed: bool,
    lines: Lines | None = None,
    rows: Lines | None = None,
) -> set[int]:
    """What was read of the input must be the same, but for failed lines corrected in place: their numbers.

    The byte-for-byte check comes first; only when it fails is each recorded line compared with
    the input's line of that number, by the content digest its record carries (a table's: with its
    row of that number, as ``rows`` makes it).
    """
    prefix = PrefixHash.matching(input_path, saved.input_offset, saved.input_hash, lines)
    if prefix is not None:
        state.prefix = prefix
        return set()
    if saved.input is not None and saved.input != state.input:  # not a change: another file's outputs
        raise ConfigError(
            f"cannot resume: {outputs[0]} holds the answers to another input file, {saved.input}, not {input_path}. "
            f"HINT: give {input_path.name} outputs of its own ({OUTPUT_PATH}{input_path.name}.results.jsonl), or run "
            f"{saved.input} again; or start over on these with {RESTART} (the old outputs are kept beside them)"
        )
    if input_path.suffix.lower() in TABLES and rows is not None:  # a table's rows are not its lines
        return _edited(input_path, outputs, sizes, retry_failed, rows, unit="row")
    if input_path.suffix.lower() in TABLES:
        raise ConfigError(
            f"cannot resume: {input_path} changed: its first {saved.input_offset:,} bytes, which the last run "
            "already read, are not the same (appending rows is fine; editing or reordering them is not). "
            f"HINT: restore the original file, or start over with {RESTART} (the old outputs are kept beside it)"
        )
    return _edited(input_path, outputs, sizes, retry_failed, lines, unit="line" if lines is None else "row")


def _line_count(input_path: Path, lines: Lines | None) -> int:
    """How many lines (or a table's rows) the input has: what bounds the line numbers worth comparing."""
    if lines is not None:
        return sum(1 for _ in lines(input_path))
    count, last = 0, b"\n"
    with input_path.open("rb") as f:
        while block := f.read(1 << 20):
            count, last = count + block.count(b"\n"), block
    return count + (not last.endswith(b"\n"))


def _edited(
    input_path: Path,
    outputs: tuple[Path, Path],
    sizes: list[int],
    retry_failed: bool,
    lines: Lines | None = None,
    unit: str = "line",
) -> set[int]:
    """The failed lines whose content changed; ConfigError if a line whose request was answered changed."""
    digests, kinds = array("Q"), bytearray()  # by line number: the record's digest; 1 answered, 2 failed, 3 bad input
    most = _line_count(input_path, lines)  # a record past the input's end has no line to compare: not kept
    for path, size in zip(outputs, sizes, strict=True):
        for record in scan(path, 0, size):
            line_no, digest = int(record[LINE]), _line_hash(record)
            if line_no > most:
                continue
            if digest is None:  # a line too long to digest: its content cannot be compared
                raise _changed(input_path, line_no, "its record has no digest to compare", unit=unit)
            if line_no >= len(kinds):
                grow = line_no + 1 - len(kinds)
                digests.extend([0] * grow)
                kinds.extend(bytes(grow))
            digests[line_no] = digest
            kinds[line_no] = 1 if path == outputs[0] else 3 if _code(record) == INVALID_INPUT else 2
    edited, line_no = set(), 0
    with contextlib.ExitStack() as stack:
        f = lines(input_path) if lines is not None else stack.enter_context(input_path.open("rb"))
        for line_no, raw in enumerate(f, 1):
            if line_no >= len(kinds):
                break
            raw = raw.removeprefix(BOM) if line_no == 1 else raw
            if not kinds[line_no] or line_digest(raw) == digests[line_no]:
                continue
            if kinds[line_no] == 1:
                raise _changed(input_path, line_no, "its answer is recorded", unit=unit)
            if kinds[line_no] == 2 and not retry_failed:
                raise _changed(input_path, line_no, "it failed after being sent", failed=True, unit=unit)
            edited.add(line_no)
    if line_no < len(kinds) - 1 and any(kinds[line_no + 1 :]):
        raise _changed(input_path, len(kinds) - 1, "it is recorded but no longer in the file", unit=unit)
    return edited


def _changed(input_path: Path, line_no: int, why: str, *, failed: bool = False, unit: str = "line") -> ConfigError:
    """A recorded line (a table's row: ``unit``) changed in a way a resume cannot take, named, with what to do."""
    own = "its own custom_id" if unit == "line" else "its own id (if the table has an id column)"
    retry = f"pass {RETRY_FAILED} to run every failed {unit} again, this one as it is now; or " if failed else ""
    return ConfigError(
        f"cannot resume: {input_path} changed at {unit} {line_no:,}, and {why} ({unit}s may be appended, and a "
        f"{unit} recorded only as bad input may be corrected in place). "
        f"HINT: {retry}restore {unit} {line_no:,} and append the corrected {unit} with {own}; "
        f"or start over with {RESTART} (the old outputs are kept beside it)"
    )


def _code(record: dict[str, Any]) -> str:
    return str((record.get("error") or {}).get("code"))


def _accept_changes(changed: list[str], state: ResumeState, checkpoint: Path, accept: bool) -> None:
    names = ", ".join(changed)
    if state.results_lines == 0:
        state.notes.append(f"{names} changed since the last run, which had no successes: going on with the new options")
        return
    if not accept:
        raise ConfigError(
            f"cannot resume: {names} changed since the checkpoint {checkpoint} was written, and "
            f"{state.results_lines:,} results were made with the old options. HINT: run the original options "
            f"again; or pass {ACCEPT_CHANGES} to run the remaining lines with the new ones (the results file "
            f"will mix the two); or {RESTART} to start over (the old outputs are kept beside it)"
        )
    state.changed = changed
    state.notes.append(
        f"{ACCEPT_CHANGES}: the remaining lines run with the new {names}; the results file mixes the two"
    )


def drop_errors(errors: Path, checkpoint: Path, state: ResumeState, drop: Callable[[dict[str, Any]], bool]) -> int:
    """Remove the error lines ``drop`` picks (given each record), crash-safely, so those inputs run again.

    The checkpoint goes first, so a crash at any point leaves the outputs as the
    only truth: either the old errors file (the failures stay recorded) or the
    new one (they are not done, and run again).
    """
    if not errors.exists():
        return 0
    checkpoint.unlink(missing_ok=True)
    dropped = 0

    def kept() -> Iterator[bytes]:
        nonlocal dropped
        with errors.open("rb") as src:
            for raw in src:
                record = orjson.loads(raw)
                if drop(record):
                    state.forget(record)
                    dropped += 1
                else:
                    yield raw

    replace_atomically(errors, kept())
    state.errors_lines -= dropped
    state.errors_offset = errors.stat().st_size
    return dropped
