"""Lazy JSONL reader: bytes on disk -> ParsedLine | BadLine, one line at a time.

The format is detected line by line (see docs/usage.md "Input formats"). Nothing here
builds requests; that is ``requests.py``.
"""

from __future__ import annotations

import contextlib
import csv
import re
import shlex
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Protocol

import orjson

from ..errors import ConfigError
from ..protocol import BATCH_URLS
from ..store.files import TABLES
from ..store.ids import IdLog, IdSet, digest, line_digest


class Done(Protocol):
    """The lines already recorded (``store.checkpoint.DoneSet``), as the reader asks about them."""

    def __contains__(self, line_no: object) -> bool: ...
    def claim(self, line_no: int, line_hash: int) -> bool: ...


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


_SNIFF = 64 * 1024
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
        try:
            _parquet().ParquetFile(path)
        except ConfigError:
            raise
        except Exception as exc:  # pyarrow's errors for a file that is not Parquet
            raise ConfigError(f"{path} is not a Parquet file pyarrow can read: {exc}") from None
        return
    for bom, encoding in _WIDE_BOMS.items():
        if head.startswith(bom):
            out = _beside(path, ".utf8.jsonl")
            raise ConfigError(
                f"{path} is {encoding} text (PowerShell's default); asyncbatch reads UTF-8. HINT: convert it with "
                f"`iconv -f {encoding} -t UTF-8 {_quoted(path)} > {out}`, or in PowerShell "
                f"`Get-Content {_quoted(path)} | Set-Content -Encoding utf8 {out}`"
            )
    if b"\x00" in head:
        raise ConfigError(f"{path} holds NUL bytes: it is binary, or UTF-16 without a byte-order mark, not JSONL")
    if is_table(path):
        table_header(path)  # a header row is required
        return
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"["):
        raise ConfigError(
            f"{path} is a JSON array, not JSONL (one object per line). "
            f"HINT: `jq -c '.[]' {_quoted(path)} > {_beside(path, '.jsonl')}`"
        )
    first = text.split(b"\n", 1)[0]
    if first and not first.startswith(b"{") and (b"," in first or b"\t" in first) and not _is_json(first):
        kind = "TSV" if b"\t" in first and b"," not in first else "CSV"
        raise ConfigError(
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
    """Count lines fast (newline bytes, plus a final unterminated line; a Parquet file's rows)."""
    if is_parquet(path):
        return int(_parquet().ParquetFile(path).metadata.num_rows)
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(chunk):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def read_lines(
    path: Path, done: Done | None = None, ids: IdLog | None = None
) -> Generator[ParsedLine | BadLine, None, None]:
    """Yield every non-blank line of ``path`` as a ParsedLine or a BadLine; a repeated custom_id is a BadLine.

    Lines ``done`` holds are not yielded: by number, or by content (``DoneSet.claim``) for
    records recovered without their line number. ``ids`` records each line's id digest and
    hashes the bytes read; the lines it already recorded (a resumed run) are not even parsed
    when done, and the others know from it whether they repeat an earlier id.
    """
    ids = ids or IdLog(None)
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
                content = line_digest(raw) if raw else 0  # once: to match a recorded line, or for its record
                if done is not None and done.claim(line_no, content):
                    done_id = _quick_id(raw) if raw else None  # done, but not in the log: only the id is read
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
                obj = orjson.loads(raw) if raw and raw.strip() else None
            except orjson.JSONDecodeError:
                obj = None
            yield line_no, obj if isinstance(obj, dict) else {}


def _duplicate(item: ParsedLine) -> BadLine:
    return BadLine(item.line_no, item.custom_id, f"duplicate custom_id {item.custom_id!r}", item.line_hash)


def _lines_of(
    path: Path, f: BinaryIO, first: int = 1, feed: Callable[[bytes], None] | None = None, feed_after: int = 0
) -> Generator[tuple[int, bytes | None, int], None, None]:
    """The input's lines as JSON bytes: a JSONL file's own, a CSV/TSV file's rows, or a Parquet file's rows."""
    if is_parquet(path):
        return _parquet_rows(path, first, feed, feed_after)
    if is_table(path):
        return _table_rows(path, f, first, feed, feed_after)
    return _raw_lines(f, first, feed, feed_after)


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
            yield raw or b""


PARQUET_BATCH = 2_000  # rows read at a time: memory stays flat whatever the file's size


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError('a Parquet input needs pyarrow: pip install "asyncbatch[parquet]"') from None
    return pq


def parquet_lines(path: Path) -> Iterator[bytes]:
    """A Parquet file's rows, each as one JSON line (the bytes the reader hashes), in row batches.

    Decoded with the system allocator, which gives memory back between row groups (Arrow's
    default pool keeps it); every buffer remembers its pool, so the swap is safe for other code.
    """
    import pyarrow as pa

    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        for batch in _parquet().ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH, use_threads=False):
            for row in batch.to_pylist():
                yield orjson.dumps(row, default=str, option=options) + b"\n"
    finally:
        pa.set_memory_pool(pool)


def _parquet_rows(
    path: Path, first: int, feed: Callable[[bytes], None] | None, feed_after: int
) -> Generator[tuple[int, bytes | None, int], None, None]:
    """A Parquet file's rows from row ``first`` on, as (row number, the row as a JSON record, its size as a line)."""
    for row_no, raw in enumerate(parquet_lines(path), 1):
        if row_no < first:
            continue
        if feed is not None and row_no > feed_after:
            feed(raw)
        yield row_no, raw, len(raw)


def is_table(path: Path) -> bool:
    """A CSV or TSV file (by its suffix): its rows are the input's records."""
    return path.suffix.lower() in TABLES


def table_header(path: Path) -> tuple[list[str], type[csv.Dialect] | csv.Dialect, bytes]:
    """A table's column names, its dialect (sniffed within the suffix's delimiter), and the header's bytes.

    :raises ConfigError: no header, or one with an empty or repeated name.
    """
    with path.open("rb") as f:
        sample = f.read(_SNIFF).removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
        try:
            dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
                sample, delimiters=TABLES[path.suffix.lower()]
            )
        except csv.Error:
            dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
        f.seek(0)
        pulled: list[bytes] = []
        header = next(csv.reader(_decoded(f, pulled), dialect), None)
    if not header or any(not name.strip() for name in header) or len(set(header)) != len(header):
        raise ConfigError(
            f"{path} needs a header row naming every column once (got {header!r}): --template fills "
            "{{names}} from it, and an id or custom_id column names each row"
        )
    return header, dialect, b"".join(pulled)


def _decoded(f: BinaryIO, pulled: list[bytes]) -> Iterator[str]:
    """``f``'s physical lines as text for the csv module, each line's bytes kept in ``pulled``."""
    for raw in iter(f.readline, b""):
        pulled.append(raw)
        yield raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")


def _table_rows(
    path: Path, f: BinaryIO, first: int, feed: Callable[[bytes], None] | None, feed_after: int
) -> Generator[tuple[int, bytes | None, int], None, None]:
    """A CSV/TSV file's rows as (row number, the row as a JSON record, its size on disk).

    Row 1 is the first after the header, whose bytes it carries (so sizes add up to the file's
    bytes, as a JSONL file's lines do). A row with fewer cells than the header leaves the rest
    null; one with more keeps them under ``_extra``. A blank row is a blank line.
    """
    header, dialect, head = table_header(path)
    pulled: list[bytes] = []
    if f.tell() == 0:  # from the start: the header's bytes are carried by row 1, not read as a row
        f.seek(len(head))
        pulled.append(head)
    row_no = first - 1
    for cells in csv.reader(_decoded(f, pulled), dialect):
        row_no += 1
        consumed = b"".join(pulled)
        pulled.clear()
        size = len(consumed)
        if feed is not None and row_no > feed_after:
            feed(consumed)
        if not any(cell.strip() for cell in cells):
            yield row_no, b"", size
            continue
        record: dict[str, Any] = dict(zip(header, cells, strict=False))
        for name in header[len(cells) :]:
            record[name] = None
        if len(cells) > len(header):
            record["_extra"] = cells[len(header) :]
        yield row_no, orjson.dumps(record), size


def _raw_lines(
    f: BinaryIO, first: int = 1, feed: Callable[[bytes], None] | None = None, feed_after: int = 0
) -> Generator[tuple[int, bytes | None, int], None, None]:
    """Yield (line number, bytes, size on disk); None stands for a line longer than MAX_LINE_BYTES.

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
            yield line_no, None, size + len(rest)
            continue
        size = len(raw)
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 BOM is harmless; accept it
        yield line_no, raw, size


def _quick_id(raw: bytes) -> str | None:
    """Just the custom_id of a line (the same rules as parse_line, without the checks)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    cid = obj.get("custom_id")
    if cid is None and detect_kind(obj) != "batch":
        cid = obj.get("id")
        if type(cid) is int:
            cid = str(cid)
    return cid if type(cid) is str and cid else None


def parse_line(line_no: int, raw: bytes | None, content: int | None = None) -> ParsedLine | BadLine | None:
    """Parse one line; None for a blank line. ``content``: its ``line_digest``, if already known."""
    fallback_id = f"line-{line_no}"
    if raw is None:
        return BadLine(line_no, fallback_id, f"line is longer than {MAX_LINE_BYTES} bytes")
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


_PYTHON_DICT = re.compile(rb"^\s*\{\s*'|^\s*\{.*[:,]\s*(True|False|None)\s*[,}]")


def _not_json(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    if _PYTHON_DICT.match(raw):
        return (
            "a Python dict, not JSON (single quotes, or True/False/None): JSONL needs double quotes and "
            "true/false/null. HINT: write each line with json.dumps(row), not str(row)"
        )
    return f"not valid JSON (or not UTF-8): {exc}"


def detect_kind(obj: dict[str, Any]) -> Kind:
    if "body" in obj and ("url" in obj or "method" in obj):
        return "batch"
    if "messages" in obj:
        return "chat"
    return "record"


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
