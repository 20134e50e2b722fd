"""Lazy input reader: bytes on disk -> ParsedLine | BadLine, one line (or table row) at a time.

The input file's boundary: its bytes are decoded, bounded and judged here, once. The format is
detected line by line (see docs/usage.md "Input formats"). Every line or row the file holds
comes out once, as a ParsedLine or a BadLine naming why; the one thing raised is ``InputError``,
when the rest of the file cannot be read (a read error, a CSV row past the line limit). Nothing
here builds requests; that is ``requests.py``.
"""

from __future__ import annotations

import contextlib
import csv
import re
import shlex
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Protocol

import orjson

from ..errors import ConfigError, InputError
from ..protocol import BATCH_URLS
from .ids import IdSet, digest, line_digest

# Input tables (by suffix) and the delimiters their dialect is sniffed within: their rows are records.
TABLES = {".csv": ",;|", ".tsv": "\t"}
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark: harmless at the start of a file, and taken off there


class Done(Protocol):
    """The lines already recorded (``store.checkpoint.DoneSet``), as the reader asks about them."""

    def __contains__(self, line_no: object) -> bool: ...
    def claim(self, line_no: int, line_hash: int) -> bool: ...


class IdRecord(Protocol):
    """Where the reader keeps each line's id digest as it reads (``store.ids.IdLog``): a resume reads it back.

    ``known``: how many lines it holds already; ``recorded``: their digests, in order; ``feed``: the input's
    bytes as they are read (hashed); ``append``: the next line's digest and size.
    """

    @property
    def known(self) -> int: ...
    def recorded(self) -> Iterator[int]: ...
    def feed(self, data: bytes) -> None: ...
    def append(self, value: int, size: int) -> None: ...


class _Unrecorded:
    """No record of the ids: a read that is not a run's (the Batch API's plan, a dry run)."""

    known = 0

    def recorded(self) -> Iterator[int]:
        return iter(())

    def feed(self, data: bytes) -> None:
        return None

    def append(self, value: int, size: int) -> None:
        return None


MAX_LINE_BYTES = 32 * 1024 * 1024
Kind = Literal["batch", "chat", "record"]


class ParsedLine(NamedTuple):  # NamedTuple: built per line, several times cheaper than a frozen dataclass
    line_no: int
    custom_id: str
    kind: Kind
    obj: dict[str, Any]
    line_hash: str = ""  # the line's content digest (ids.line_digest), in hex


class BadLine(NamedTuple):
    line_no: int
    custom_id: str
    reason: str
    line_hash: str = ""


class Unreadable(NamedTuple):
    """A line (a row) the reader cannot make a JSON record of: why, and the bytes that stand for it.

    ``stand_in`` is what its record's digest is taken from: the row's own bytes when they are at
    hand, a fixed stand-in for a Parquet row that cannot be decoded, nothing for an overlong line.
    """

    reason: str
    stand_in: bytes = b""


Raw = bytes | Unreadable  # a line as _lines_of yields it
EMPTY_ROW = "every cell of the row is empty"


_SNIFF = 64 * 1024
_DIALECT_SAMPLE = 8 * 1024  # what a table's dialect is told from: its first lines, whole
_WIDE_BOMS = {
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\xfe\xff": "UTF-16",
    b"\xff\xfe": "UTF-16",
}


def sniff(path: Path) -> None:
    """Refuse a whole file that is not JSONL (UTF-16, a JSON array, CSV) before anything is recorded.

    A bad line is an error line and the run goes on; a bad file would make every
    line an error line, so it is a ConfigError naming the fix.
    """
    with path.open("rb") as f:
        head = f.read(_SNIFF)
    if is_parquet(path):
        _open_parquet(path)
        return
    for bom, encoding in _WIDE_BOMS.items():
        if head.startswith(bom):
            out = _beside(path, ".utf8.jsonl")
            raise InputError(
                f"{path} is {encoding} text (PowerShell's default); asyncbatch reads UTF-8. HINT: convert it with "
                f"`iconv -f {encoding} -t UTF-8 {_quoted(path)} > {out}`, or in PowerShell "
                f"`Get-Content {_quoted(path)} | Set-Content -Encoding utf8 {out}`"
            )
    if office := _office_file(head):
        raise InputError(
            f"{path} is {office}, not a file asyncbatch reads (JSONL, CSV, TSV or Parquet). "
            "HINT: save the sheet as CSV UTF-8 (Excel: File > Save As > CSV UTF-8) or as Parquet, and run that file"
        )
    if b"\x00" in head:
        raise InputError(
            f"{path} holds NUL bytes: it is binary, or UTF-16 without a byte-order mark; asyncbatch reads JSONL, "
            "CSV, TSV or Parquet"
        )
    if is_table(path):
        table_header(path)  # a header row is required
        return
    text = head.removeprefix(BOM).lstrip()
    if text.startswith(b"["):
        raise InputError(
            f"{path} is a JSON array, not JSONL (one object per line). "
            f"HINT: `jq -c '.[]' {_quoted(path)} > {_beside(path, '.jsonl')}`"
        )
    first = text.split(b"\n", 1)[0]
    if first and not first.startswith(b"{") and (b"," in first or b"\t" in first) and not _is_json(first):
        kind = "TSV" if b"\t" in first and b"," not in first else "CSV"
        raise InputError(
            f"{path} looks like {kind} (its first line is {first[:80].decode(errors='replace')!r}), not JSONL. "
            f"HINT: name it {path.stem}.{kind.lower()}: a {kind} file's rows are records, for --template over "
            "its columns"
        )


def _quoted(path: Path) -> str:
    return shlex.quote(str(path))


def _beside(path: Path, suffix: str) -> str:
    """Where a hint's command writes its converted copy: beside ``path``, never over it nor over another file."""
    target, n = path.with_name(f"{path.stem}{suffix}"), 1
    while target.exists():  # the input itself (x.jsonl -> x.jsonl), or a file of the user's
        target, n = path.with_name(f"{path.stem}.{n}{suffix}"), n + 1
    return _quoted(target)


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def count_lines(path: Path, chunk: int = 1 << 20) -> int:
    """Count inputs: lines (newline bytes, plus a final unterminated line); a Parquet file's rows; a table's
    rows as its reader reads them (a quoted cell may hold line breaks), blank ones left out, as the reader does."""
    if is_parquet(path):
        return int(_open_parquet(path).metadata.num_rows)
    if is_table(path):
        with contextlib.suppress(InputError):  # a file the reader stops in: it says why when it gets there
            return _count_rows(path)
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(chunk):
            count += block.count(b"\n")
            last = block[-1:]
    count += last != b"\n"
    return max(0, count - 1) if is_table(path) else count


def _count_rows(path: Path) -> int:
    """A table's non-blank rows after its header, read as ``_table_rows`` reads them (but not made records).

    :raises InputError: the header cannot be read, or a row is past the line limit.
    """
    _, dialect, head = table_header(path)
    count = 0
    with path.open("rb") as f:
        f.seek(len(head))
        lines = _PhysicalLines(f, MAX_LINE_BYTES)
        rows = _csv_reader(lines, dialect)
        while True:
            try:
                cells = next(rows)
            except StopIteration:
                return count
            except csv.Error:  # a row the reader refuses: an input all the same (an error line)
                cells = ["refused"]
            except _RowTooLong:
                raise InputError(f"{path}: a row past the line limit") from None
            lines.take()
            count += len(cells) > 1 or any(cell.strip() for cell in cells)  # as _table_line tells a blank row


# The first bytes of Office files: a workbook saved as .xlsx (a ZIP) or .xls (OLE2)
_OFFICE = {
    b"PK\x03\x04": "a ZIP archive (an Excel .xlsx workbook?)",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "an Office file",
}


def _office_file(head: bytes) -> str | None:
    """What an Office file is, by its first bytes; None for anything else."""
    for magic, kind in _OFFICE.items():
        if head.startswith(magic):
            return "an Excel workbook" if b"xl/" in head or b"Workbook" in head else kind
    return None


def read_lines(
    path: Path, done: Done | None = None, ids: IdRecord | None = None
) -> Generator[ParsedLine | BadLine, None, None]:
    """Yield every non-blank line of ``path`` as a ParsedLine or a BadLine; a repeated custom_id is a BadLine.

    Lines ``done`` holds are not yielded: by number, or by content (``DoneSet.claim``) for
    records recovered without their line number. ``ids`` records each line's id digest and
    hashes the bytes read; the lines it already recorded (a resumed run) are not even parsed
    when done, and the others know from it whether they repeat an earlier id.

    :raises InputError: the rest of the file cannot be read; every line before it was yielded.
    """
    ids = ids or _Unrecorded()
    seen = IdSet()
    recorded = ids.recorded()
    known = ids.known
    with path.open("rb") as f:
        for line_no, raw, size in _lines_of(path, f, feed=ids.feed, feed_after=known):
            if line_no <= known:
                if value := next(recorded):
                    seen.add_new(value)  # a first occurrence, by construction
                if done is not None and line_no in done:  # the hot loop when resuming a long run: keep it lean
                    continue
                item = parse_line(line_no, raw)
                if isinstance(item, ParsedLine) and not value:
                    item = _duplicate(item)
            else:
                content = _content(raw)  # once: to match a recorded line, or for its record
                if done is not None and done.claim(line_no, content):
                    done_id = _quick_id(raw) if isinstance(raw, bytes) and raw else None  # done, not in the log: the id
                    ids.append(value if done_id and seen.add(value := digest(done_id)) else 0, size)
                    continue
                item, value = parse_line(line_no, raw, content), 0
                if isinstance(item, ParsedLine):
                    value = digest(item.custom_id)
                    if not seen.add(value):
                        item, value = _duplicate(item), 0
                ids.append(value, size)
            if item is not None:
                yield item


def _content(raw: Raw) -> int:
    """The line's content digest; 0 for a blank line, or one that has nothing to digest."""
    if isinstance(raw, Unreadable):
        return line_digest(raw.stand_in) if raw.stand_in else 0
    return line_digest(raw) if raw else 0


def lines_from(path: Path, offset: int, line_no: int) -> Iterator[ParsedLine | BadLine]:
    """Parse ``path`` from byte ``offset``, where line ``line_no`` starts, to the end (no duplicate check)."""
    with path.open("rb") as f:
        f.seek(0 if is_parquet(path) else offset)  # a Parquet file is read by row, from ``line_no``
        for number, raw, _ in _lines_of(path, f, first=line_no):
            item = parse_line(number, raw)
            if item is not None:
                yield item


def line_offsets(path: Path) -> Iterator[tuple[int, int]]:
    """(line number, byte offset where it starts) for every line of ``path``."""
    offset = 0
    with path.open("rb") as f:
        for line_no, _, size in _lines_of(path, f):
            yield line_no, offset
            offset += size


FIRST_LINES = 20  # what a whole file's setup mistake, or the model its lines name, is judged from


def first_lines(path: Path) -> list[ParsedLine | BadLine]:
    """The file's first FIRST_LINES non-blank lines (a table's rows), parsed: nothing is recorded of them."""
    found: list[ParsedLine | BadLine] = []
    with path.open("rb") as f, contextlib.closing(_lines_of(path, f)) as lines:
        for line_no, raw, _ in lines:
            if (item := parse_line(line_no, raw)) is not None:
                found.append(item)
            if len(found) >= FIRST_LINES:
                break
    return found


def input_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, the record's fields) for every line (a table's row) of ``path``; {} for one that is none."""
    with path.open("rb") as f:
        for line_no, raw, _ in _lines_of(path, f):
            try:
                obj = orjson.loads(raw) if isinstance(raw, bytes) and raw.strip() else None
            except orjson.JSONDecodeError:
                obj = None
            yield line_no, obj if isinstance(obj, dict) else {}


def _duplicate(item: ParsedLine) -> BadLine:
    return BadLine(item.line_no, item.custom_id, f"duplicate custom_id {item.custom_id!r}", item.line_hash)


def _lines_of(
    path: Path, f: BinaryIO, first: int = 1, feed: Callable[[bytes], None] | None = None, feed_after: int = 0
) -> Generator[tuple[int, Raw, int], None, None]:
    """The input's lines as JSON bytes: a JSONL file's own, a CSV/TSV file's rows, or a Parquet file's rows.

    Each comes as (number, the line or ``Unreadable``, its size as the input's bytes or lines).
    """
    if is_parquet(path):
        lines = _parquet_rows(path, first, feed, feed_after)
    elif is_table(path):
        lines = _table_rows(path, f, first, feed, feed_after)
    else:
        lines = _raw_lines(f, first, feed, feed_after)
    return _read_errors_named(path, lines)


def _read_errors_named(
    path: Path, lines: Generator[tuple[int, Raw, int], None, None]
) -> Generator[tuple[int, Raw, int], None, None]:
    """``lines``; a read error (EIO, a network share gone) is an InputError naming the file: the rest cannot be read."""
    try:
        yield from lines
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror or exc}. Nothing read before is lost. HINT: make the file readable "
            "again (check the disk or the network share), then run the same command again: it goes on from there"
        ) from None


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def virtual_lines(path: Path) -> Callable[[Path], Iterator[bytes]] | None:
    """For an input whose lines are not its bytes (Parquet), its lines as the reader makes them; else None.

    A Parquet file's rows are JSON lines to the reader: what it hashes, counts and compares on a resume.
    """
    return parquet_lines if is_parquet(path) else None


def row_lines(path: Path) -> Callable[[Path], Iterator[bytes]] | None:
    """For a CSV or TSV table, its rows as the reader makes them (JSON records, what a record's ``line_hash``
    is a digest of), to compare recorded rows one by one on a resume; else None."""
    return _table_lines if is_table(path) else None


def _table_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for _, raw, _ in _table_rows(path, f, 1, None, 0):
            yield raw.stand_in if isinstance(raw, Unreadable) else raw or b""


PARQUET_BATCH = 2_000  # rows read at a time: memory stays flat whatever the file's size
_JSON_ROW = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError('a Parquet input needs pyarrow: pip install "asyncbatch[parquet]"') from None
    return pq


def _open_parquet(path: Path) -> Any:
    """``path`` as a ``pyarrow.parquet.ParquetFile`` whose footer adds up; InputError naming the file if not."""
    pq = _parquet()
    try:
        file = pq.ParquetFile(path)
        metadata = file.metadata
        counts = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
        problem = _footer_problem(metadata, path.stat().st_size)
        names = [field.name for field in file.schema_arrow]
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet: OSError, ArrowInvalid, ...
        raise InputError(
            f"{path} is not a Parquet file pyarrow can read: {_first_line(exc)}. HINT: write it again from its source"
        ) from None
    if min(counts, default=0) < 0 or sum(counts) != metadata.num_rows:
        problem = f"its footer says {metadata.num_rows:,} rows, its row groups {sum(counts):,}"
    if problem is not None:
        raise InputError(f"{path} is damaged: {problem}. HINT: write it again from its source")
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise InputError(
            f"{path} has more than one column named {', '.join(map(repr, repeated))}: a row's record could keep one "
            "of them only. HINT: rename the columns so that each name is used once, and write the file again"
        )
    return file


# The most rows a column chunk of n bytes can hold: a data page's header takes 16 bytes or more (Thrift's
# compact encoding of its required fields), and a page holds at most 2**31 - 1 values (an i32 counts them).
_PAGE_HEADER_BYTES = 16
_PAGE_VALUES = 2**31 - 1


def _footer_problem(metadata: Any, file_size: int) -> str | None:
    """Why the footer's row counts cannot be true, or None: every row is a value (or a null) in every column,
    so a row group cannot hold more rows than any of its column chunks holds values, nor than its bytes can
    hold pages. A footer that lies would have the reader stand in millions of rows that are not there."""
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        rows = row_group.num_rows
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            pages = -(-min(max(chunk.total_compressed_size, 0), file_size) // _PAGE_HEADER_BYTES)
            if chunk.num_values < rows or rows > pages * _PAGE_VALUES:
                return (
                    f"its footer says row group {group + 1} holds {rows:,} rows, but its column "
                    f"{chunk.path_in_schema!r} ({chunk.total_compressed_size:,} bytes, {chunk.num_values:,} values) "
                    "cannot hold that many"
                )
    return None


def _first_line(exc: BaseException) -> str:
    """A library's error, as one printable line of at most 300 characters, without a final full stop (a
    sentence goes on after it)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return "".join(ch if ch.isprintable() else "?" for ch in line).strip(" :?.")


def parquet_lines(path: Path) -> Iterator[bytes]:
    """A Parquet file's rows, each as one JSON line (the bytes the reader hashes), in row batches.

    A row that cannot be decoded is its stand-in (``Unreadable.stand_in``): its record's digest
    matches it while the file is the same, and no longer once the row is mended.
    """
    for item in _parquet_items(path):
        yield item.stand_in if isinstance(item, Unreadable) else item


def _parquet_items(path: Path) -> Iterator[Raw]:
    """A Parquet file's rows in order: each a JSON line, or ``Unreadable`` (its page or a cell cannot be decoded).

    Row groups are read one at a time, so a page pyarrow cannot decode costs the rows of its
    group only: they stand as Unreadable, as many as the footer gives the group, and the next
    group is read. Decoded with the system allocator, which gives memory back between row
    groups (Arrow's default pool keeps it); every buffer remembers its pool, so the swap is safe
    for other code.
    """
    import pyarrow as pa

    file = _open_parquet(path)
    pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        row_no = 0
        for group in range(file.metadata.num_row_groups):
            for item in _row_group(path, file, group):
                row_no += 1
                if isinstance(item, Unreadable) and not item.stand_in:  # a fixed stand-in, which no row's JSON is
                    item = Unreadable(item.reason, b"\x00row %d\n" % row_no)
                yield item
    finally:
        pa.set_memory_pool(pool)


def _row_group(path: Path, file: Any, group: int) -> Iterator[Raw]:
    """One row group's rows; as many ``Unreadable`` as the footer gives it for those its pages cannot give.

    :raises InputError: its pages end, undamaged, before the rows its footer counts: the footer lies, and the
        rows it counts past them are not there to stand in for.
    """
    expected = file.metadata.row_group(group).num_rows
    batches = file.iter_batches(batch_size=PARQUET_BATCH, row_groups=[group], use_threads=False)
    given = 0
    while True:
        try:
            batch = next(batches, None)
        except OSError as exc:
            if exc.errno is not None:
                raise  # the disk's error, not the file's: the rest cannot be read (_read_errors_named)
            reason = f"row group {group + 1} cannot be decoded ({_first_line(exc)})"
            break
        except Exception as exc:  # pyarrow's other errors for a page it cannot decode: ArrowInvalid, ...
            reason = f"row group {group + 1} cannot be decoded ({_first_line(exc)})"
            break
        if batch is None:
            if given < expected:
                raise InputError(
                    f"{path} is damaged: its footer says row group {group + 1} holds {expected:,} rows, its pages "
                    f"{given:,}. Every row before is read. HINT: write it again from its source, then run the same "
                    "command again: it goes on from there"
                )
            return
        for item in _batch_lines(batch):
            given += 1
            yield item
    for _ in range(expected - given):
        yield Unreadable(
            f"{reason}. HINT: write the file again from its source, then run the same command: these rows run then"
        )


def _batch_lines(batch: Any) -> Iterator[Raw]:
    """A record batch's rows as JSON lines; a row whose cells Python cannot hold, or that is not UTF-8, Unreadable."""
    try:
        rows: list[Any] = batch.to_pylist()
    except Exception:  # a cell that is not UTF-8, a date past year 9999...: find its row, and only it fails
        rows = [_row_cells(batch, index) for index in range(batch.num_rows)]
    for row in rows:
        yield row if isinstance(row, Unreadable) else _row_line(row)


def _row_cells(batch: Any, index: int) -> dict[str, Any] | Unreadable:
    try:
        row: dict[str, Any] = batch.slice(index, 1).to_pylist()[0]
    except UnicodeDecodeError as exc:
        return Unreadable(_not_utf8(exc, parquet=True))
    except Exception as exc:  # a value Python has no type for: OverflowError, ArrowNotImplementedError...
        return Unreadable(f"a cell cannot be read: {_first_line(exc)}")
    return row


def _row_line(row: dict[str, Any]) -> Raw:
    try:
        line = orjson.dumps(row, default=_cell, option=_JSON_ROW) + b"\n"
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, UnicodeDecodeError):
            return Unreadable(_not_utf8(exc.__cause__, parquet=True))
        return Unreadable(f"the row cannot be written as JSON: {_first_line(exc)}")  # nested past orjson's limit...
    if len(line) > MAX_LINE_BYTES:
        return Unreadable(f"row is longer than {MAX_LINE_BYTES} bytes as a JSON line", line)
    return line


def _cell(value: object) -> object:
    """A cell JSON has no type for: bytes are text if UTF-8 (the one rule for every format); the rest, its str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")  # raises: refused like a JSONL line that is not UTF-8
    return str(value)


def _parquet_rows(
    path: Path, first: int, feed: Callable[[bytes], None] | None, feed_after: int
) -> Generator[tuple[int, Raw, int], None, None]:
    """A Parquet file's rows from row ``first`` on, as (row number, the row as a JSON record, its size as a line)."""
    for row_no, item in enumerate(_parquet_items(path), 1):
        if row_no < first:
            continue
        line = item.stand_in if isinstance(item, Unreadable) else item
        if feed is not None and row_no > feed_after:
            feed(line)
        yield row_no, item, len(line)


def is_table(path: Path) -> bool:
    """A CSV or TSV file (by its suffix): its rows are the input's records."""
    return path.suffix.lower() in TABLES


class _RowTooLong(Exception):
    """A CSV/TSV row past the line limit: where it ends cannot be trusted (a quote that never closes)."""


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # after a CR that no LF follows


class _PhysicalLines:
    """A table's physical lines as text for ``csv.reader``, at most the line limit per row; each row's bytes kept.

    Lines end at LF, CRLF or a lone CR, as Python reads a CSV file opened with ``newline=""``.
    Bytes are decoded with ``surrogateescape``: a row that is not UTF-8 keeps its shape, so its end
    is found, and it is refused whole when its record is made (``_table_line``).
    """

    def __init__(self, f: BinaryIO, limit: int, carried: bytes = b"") -> None:
        self.f, self.limit = f, limit
        self.row = [carried] if carried else []  # the row's bytes so far (row 1 carries the header's)
        self.size = 0  # the row's own bytes, which the limit bounds
        self.at_start = f.tell() == 0
        self.pending: list[bytes] = []  # the rest of a line a lone CR cut, last piece first
        self.carry = b""  # the start of a line the last read stopped in

    def __iter__(self) -> _PhysicalLines:
        return self

    def __next__(self) -> str:
        raw = self.pending.pop() if self.pending else self._read()
        if not raw:
            raise StopIteration
        self.row.append(raw)
        self.size += len(raw)
        if self.size > self.limit:
            raise _RowTooLong
        if self.at_start:  # a UTF-8 BOM is harmless at the start of the file; accept it
            self.at_start = False
            raw = raw.removeprefix(BOM)
        return raw.decode("utf-8", "surrogateescape")

    def _read(self) -> bytes:
        """The next line, up to LF or a lone CR; one longer than the limit comes cut, and its row is too long."""
        raw = self.carry + self.f.readline(self.limit + 1 - len(self.carry))
        self.carry = b""
        cut = len(raw) > self.limit and not raw.endswith(b"\n")  # the file's line goes on past what was read
        if raw.find(b"\r", 0, len(raw) - (2 if raw.endswith(b"\r\n") else 1)) == -1 and not (cut and raw[-1:] == b"\r"):
            return raw  # one line: the common case
        pieces = [piece for piece in _LONE_CR.split(raw) if piece]
        if cut and len(pieces) > 1:  # the last piece goes on (or is a CR whose LF is not read yet): read on
            self.carry = pieces.pop()
        self.pending = pieces[:0:-1]
        return pieces[0]

    def take(self) -> tuple[bytes, int]:
        """The bytes of the row just read, and how many of them are its own; the next row starts empty."""
        taken, own = b"".join(self.row), self.size
        self.row.clear()
        self.size = 0
        return taken, own


def _csv_reader(lines: _PhysicalLines, dialect: type[csv.Dialect] | csv.Dialect) -> Iterator[list[str]]:
    if csv.field_size_limit() <= MAX_LINE_BYTES:  # process-wide, so only ever raised: rows are bounded by lines
        csv.field_size_limit(MAX_LINE_BYTES + 1)
    return csv.reader(lines, dialect)


_LINE_END = re.compile(r"\r\n|\r|\n")


def _dialect(sample: str, delimiters: str) -> type[csv.Dialect]:
    """A table's dialect, told from its first lines in linear time.

    Excel's (RFC 4180 quoting), with the delimiter among ``delimiters`` that splits the most lines
    into the same number of cells outside quotes, and the spaces after a delimiter skipped if one always
    follows it. Quotes are ``"``; ``'`` only when every cell of every whole line of the sample is wrapped
    in it: a text that merely begins with ``'`` (``'tis``, an escaped formula) would otherwise open a
    quote that runs on over the next rows, merging them silently. Not csv.Sniffer: its regular
    expressions backtrack, and some text of 3 kB kept it busy for minutes.
    """
    quoted = re.compile("'[^'\n\r]*'(?:[" + re.escape(delimiters) + "] ?'[^'\n\r]*')*")
    whole = [line for line in _LINE_END.split(sample)[:-1] if line]  # the last may be cut by the sample's end
    quote = "'" if whole and all(quoted.fullmatch(line) for line in whole) else '"'
    bare = re.sub(f"{quote}[^{quote}]*{quote}", "", sample)  # quoted text: its delimiters are no delimiters
    lines = [line for line in _LINE_END.split(bare) if line]
    chosen, best = delimiters[0], 0
    for delimiter in delimiters:
        counts = Counter(line.count(delimiter) for line in lines)
        counts.pop(0, None)
        if (score := max(counts.values(), default=0)) > best:
            chosen, best = delimiter, score
    skip = 0 < bare.count(chosen) == bare.count(chosen + " ")
    return type("sniffed", (csv.excel,), {"delimiter": chosen, "quotechar": quote, "skipinitialspace": skip})


def table_header(path: Path) -> tuple[list[str], type[csv.Dialect] | csv.Dialect, bytes]:
    """A table's column names, its dialect (told within the suffix's delimiters), and the header's bytes.

    :raises InputError: no header, one with an empty or repeated name, or one that cannot be read.
    """
    kind = path.suffix.lower()[1:].upper()
    with path.open("rb") as f:
        begin = f.read(_DIALECT_SAMPLE).removeprefix(BOM)
        ends = max(begin.rfind(b"\n"), begin.rfind(b"\r"))
        sample = (begin[: ends + 1] if ends > 0 else begin).decode("utf-8", errors="replace")  # whole lines
        dialect = _dialect(sample, TABLES[path.suffix.lower()])
        f.seek(0)
        lines = _PhysicalLines(f, MAX_LINE_BYTES)
        try:
            header = next(_csv_reader(lines, dialect), None)
        except _RowTooLong:
            raise InputError(
                f"{path}: its header row is longer than {MAX_LINE_BYTES:,} bytes (a quote that never closes?). "
                f"HINT: fix the header, or save the file as {kind} again"
            ) from None
        except csv.Error as exc:
            raise InputError(f"{path}: its header row cannot be read as {kind}: {_csv_problem(exc)}") from None
        head = lines.take()[0]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: its header row is {_not_utf8(exc)}") from None
    if not header or any(not name.strip() for name in header) or len(set(header)) != len(header):
        raise InputError(
            f"{path} needs a header row naming every column once (got {header!r}): --template fills "
            "{{names}} from it, and an id or custom_id column names each row"
        )
    return header, dialect, head


def _csv_problem(exc: csv.Error) -> str:
    return str(exc).split(" - ")[0]  # not the csv module's advice to Python programmers


def _table_rows(
    path: Path, f: BinaryIO, first: int, feed: Callable[[bytes], None] | None, feed_after: int
) -> Generator[tuple[int, Raw, int], None, None]:
    """A CSV/TSV file's rows as (row number, the row as a JSON record, its size on disk).

    Row 1 is the first after the header, whose bytes it carries (so sizes add up to the file's
    bytes, as a JSONL file's lines do). A row with fewer cells than the header leaves the rest
    null; one with more keeps them under ``_extra``. A blank row is a blank line. A row the csv
    module refuses, or that is not UTF-8, is Unreadable; one past the line limit ends the reading
    (InputError), since where it ends, and so where the next row starts, cannot be trusted.
    """
    header, dialect, head = table_header(path)
    carried = b""
    if f.tell() == 0:  # from the start: the header's bytes are carried by row 1, not read as a row
        f.seek(len(head))
        carried = head
    lines = _PhysicalLines(f, MAX_LINE_BYTES, carried)
    rows = _csv_reader(lines, dialect)
    kind = path.suffix.lower()[1:].upper()
    row_no = first - 1
    while True:
        problem = None
        try:
            cells = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            cells, problem = [], f"cannot be read as a {kind} row: {_csv_problem(exc)}"
        except _RowTooLong:
            raise InputError(
                f"{path}: row {row_no + 1:,} is longer than {MAX_LINE_BYTES:,} bytes, so where it ends cannot be "
                "trusted (most often a quote that never closes, which makes the rest of the file one cell). Nothing "
                f"read before it is lost. HINT: fix row {row_no + 1:,} (close its quote, or shorten it), then run "
                "the same command again: it goes on from there"
            ) from None
        row_no += 1
        consumed, own = lines.take()
        if feed is not None and row_no > feed_after:
            feed(consumed)
        row = consumed[len(consumed) - own :]
        yield row_no, Unreadable(problem, row) if problem else _table_line(header, cells, row), len(consumed)


def _table_line(header: list[str], cells: list[str], row: bytes) -> Raw:
    """A row's cells as its JSON record; b"" for a blank row (at most one cell, of white space: no input);
    Unreadable if its bytes are not UTF-8, or if it has two cells or more and every one is empty (``,,``: an
    input with nothing in it, named as an error line rather than left out unseen)."""
    if not any(cell.strip() for cell in cells):
        return Unreadable(EMPTY_ROW, row) if len(cells) > 1 else b""
    record: dict[str, Any] = dict(zip(header, cells, strict=False))
    for name in header[len(cells) :]:
        record[name] = None
    if len(cells) > len(header):
        record["_extra"] = cells[len(header) :]
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError as exc:  # a cell holding bytes that are not UTF-8 (kept as surrogates)
        try:
            row.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Unreadable(_not_utf8(bad), row)
        return Unreadable(f"the row cannot be written as JSON: {_first_line(exc)}", row)


def _raw_lines(
    f: BinaryIO, first: int = 1, feed: Callable[[bytes], None] | None = None, feed_after: int = 0
) -> Generator[tuple[int, Raw, int], None, None]:
    """Yield (line number, bytes, size on disk); a line longer than MAX_LINE_BYTES is Unreadable, never held whole.

    :param first: the number of the line ``f`` is at (1 at the start of the file).
    :param feed: given every byte read of the lines after ``feed_after``, before the line is yielded.
    """
    line_no = first - 1
    while raw := f.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        fed = feed if feed is not None and line_no > feed_after else None
        if fed is not None:
            fed(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            size = len(raw)
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                size += len(rest)
                if fed is not None:
                    fed(rest)
            if fed is not None:
                fed(rest)
            yield line_no, Unreadable(f"line is longer than {MAX_LINE_BYTES} bytes"), size + len(rest)
            continue
        size = len(raw)
        if line_no == 1:
            raw = raw.removeprefix(BOM)
        yield line_no, raw, size


def _quick_id(raw: bytes) -> str | None:
    """Just the custom_id of a line (the same rules as parse_line, without the checks)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return (_custom_id(obj, detect_kind(obj)) or None) if type(obj) is dict else None


def parse_line(line_no: int, raw: Raw, content: int | None = None) -> ParsedLine | BadLine | None:
    """Parse one line; None for a blank line. ``content``: its ``line_digest``, if already known."""
    fallback_id = f"line-{line_no}"
    if isinstance(raw, Unreadable):  # said why where it was read
        content = _content(raw) if content is None else content
        return BadLine(line_no, fallback_id, raw.reason, f"{content:016x}" if content else "")
    if not raw.strip():
        return None
    line_hash = f"{line_digest(raw) if content is None else content:016x}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BadLine(line_no, fallback_id, _not_json(raw, exc), line_hash)
    if not isinstance(obj, dict):
        return BadLine(line_no, fallback_id, f"expected a JSON object, got {type(obj).__name__}", line_hash)
    kind = detect_kind(obj)
    custom_id = _custom_id(obj, kind)
    if custom_id is None:
        return BadLine(line_no, fallback_id, "custom_id must be a non-empty string", line_hash)
    problem = _shape_problem(obj, kind)
    if problem:
        return BadLine(line_no, custom_id or fallback_id, problem, line_hash)
    return ParsedLine(line_no, custom_id or fallback_id, kind, obj, line_hash)


def _not_utf8(exc: UnicodeDecodeError, parquet: bool = False) -> str:
    """The refusal of bytes that are not UTF-8, the same words for every format: where, and what to do
    (iconv converts text files; a Parquet file is written again by what made it)."""
    data = exc.object
    before = bytes(data[max(0, exc.start - 24) : exc.start]).decode("utf-8", "replace")
    if parquet:
        todo = (
            "write the Parquet file again from its source, with that column's text encoded as UTF-8 (or typed "
            "binary if it is not text): a Parquet file is re-encoded by what wrote it, not by iconv"
        )
    else:
        todo = "save the file as UTF-8, or convert it, e.g. from Windows-1252 or Latin-1: "
        todo += "iconv -f CP1252 -t UTF-8 IN > OUT"
    return f"not UTF-8 text (byte 0x{data[exc.start]:02X} after {before!r}); asyncbatch reads UTF-8. HINT: {todo}"


_PYTHON_DICT = re.compile(rb"^\s*\{\s*'|^\s*\{.*[:,]\s*(True|False|None)\s*[,}]")


def _not_json(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:  # only now that orjson refused it: the hot path decodes nothing twice
        return _not_utf8(bad)
    if _PYTHON_DICT.match(raw):
        return (
            "a Python dict, not JSON (single quotes, or True/False/None): JSONL needs double quotes and "
            "true/false/null. HINT: write each line with json.dumps(row), not str(row)"
        )
    return f"not valid JSON: {exc}"


def detect_kind(obj: dict[str, Any]) -> Kind:
    if "body" in obj and ("url" in obj or "method" in obj):
        return "batch"
    if "messages" in obj:
        return "chat"
    return "record"


def record_id(obj: dict[str, Any], line_no: int) -> str:
    """The custom_id a line of these fields is named by (``parse_line``'s rules); ``line-<n>`` if none is usable."""
    return _custom_id(obj, detect_kind(obj)) or f"line-{line_no}"


def _custom_id(obj: dict[str, Any], kind: Kind) -> str | None:
    """The line's id; "" when it has none; None when it has one that is unusable."""
    value = obj.get("custom_id")
    if value is None and kind != "batch":
        value = obj.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
    if value is None:
        return ""
    return value if isinstance(value, str) and value else None


def _shape_problem(obj: dict[str, Any], kind: Kind) -> str | None:
    if kind == "batch":
        if obj.get("method", "POST") != "POST":
            return f"batch line method must be POST, got {obj.get('method')!r}"
        api = BATCH_URLS.get(obj.get("url"))  # type: ignore[arg-type]
        if api is None:
            urls = ", ".join(sorted(BATCH_URLS))
            return f"batch line url must be one of {urls}; got {obj.get('url')!r}"
        if not isinstance(obj["body"], dict):
            return "batch line 'body' must be an object"
        if api != "chat":
            return None if obj["body"].get("input") else f"'body.input' is required for {api} lines"
        return _messages_problem(obj["body"].get("messages"), "body.messages")
    if kind == "chat":
        return _messages_problem(obj["messages"], "messages")
    return None


def _messages_problem(messages: object, where: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"'{where}' must be a non-empty list of message objects"
    if not all(isinstance(m, dict) for m in messages):
        return f"every item of '{where}' must be an object"
    return None
