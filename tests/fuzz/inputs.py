"""Generated input files at the input boundary: CSV/TSV, Parquet and JSONL bytes, judged by the reader's invariants.

    fuzz(cases, seed) -> FuzzReport

The files: CSV and TSV in random dialects (delimiters, quoting, escapes, line endings, a BOM) with
huge cells, rows in other encodings (Latin-1, Windows-1252, UTF-16) and NULs; Parquet with random
schemas (lists, structs and maps nested in each other, temporal and decimal types, strings that are
not UTF-8), several row groups and pages, truncated or with scrambled bytes or column chunks; JSONL
with every kind of line, too long, not UTF-8, not JSON. Some are cut short or have bytes thrown in.

The invariants, on every case, read in-process (fast):

* no traceback: the reader raises nothing but ``InputError`` (refused, or a clean stop), naming the file;
* exactly once: every line or row comes out once, in order: a table's rows and a file's lines tile its
  bytes; a Parquet file gives as many rows as its footer; a Batch API part read from its offset gives
  the same lines; a CSV gives the rows Python's csv module reads (``newline=""``) in the sniffed dialect;
* one encoding rule: a line or row that is not UTF-8 is refused as such, and only such a one; no U+FFFD
  is made up; the good rows of a Parquet file around a damaged row group carry on, each in its place;
* bounded memory: reading a file many times the line limit holds a few lines' worth at a time.

A sample (``e2e_share``) also runs the whole CLI twice against the simulator on 127.0.0.1: only
documented exit codes, no traceback, every answer the server gave recorded, every row recorded once
(or a clean stop naming the file, with everything before it recorded at most once), and nothing sent
again by the second run. The line limit is lowered to ``LIMIT`` bytes meanwhile, so huge cells are
cheap to make.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
import random
import tempfile
import time
import traceback
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.errors import InputError
from asyncbatch.input import reader
from asyncbatch.input.reader import BadLine, ParsedLine
from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread
from tests.fuzz.report import FuzzReport

LIMIT = 2048  # the line limit while fuzzing (32 MiB in a real run): a huge cell is a few kB
KEY = "fuzz-inputs-key-5f1e2d"
SHRINK_SECONDS = 120.0  # a failure's shrinking is cut short after this: whole runs make it slow
TEMPLATE = "Say something about this row."  # renders for any record: the run's verdict is the reader's
NOT_UTF8 = "not UTF-8 text ("

Check = Callable[[str, str | None], None]  # (invariant, what broke or None)


@dataclass(frozen=True)
class Case:
    """One generated input file, and what its generator knows of it."""

    name: str  # in.csv, in.tsv, in.jsonl or in.parquet
    data: bytes
    e2e: bool = False  # also run through the CLI against the simulator
    damaged: bool = False  # bytes cut, thrown in or scrambled after it was written
    bad_rows: frozenset[int] = frozenset()  # Parquet: the rows (from 0) given a string that is not UTF-8
    damaged_group: int | None = None  # Parquet: the row group whose column chunk was scrambled
    odd_values: bool = False  # Parquet: values Python may have no type for (dates past 9999...)

    def __repr__(self) -> str:  # the report shows a case short; a regression example needs the bytes
        return f"Case({self.name!r}, {self.data[:200]!r}{'...' if len(self.data) > 200 else ''}, e2e={self.e2e})"


# -- CSV and TSV ------------------------------------------------------------------------------------

_TRICKY = ",;|\t\"'\n\r \\é€\ufeff💡"  # NULs come rarer (damage), or a whole file is refused for them
_chars = st.one_of(st.sampled_from(_TRICKY), st.characters(codec="utf-8", exclude_characters="\x00"))
_cells_text = st.text(alphabet=_chars, max_size=10)
_repeated = st.text(alphabet=_TRICKY + "ab", min_size=1, max_size=3)
_huge = st.one_of(  # up to half the line limit; now and then past it
    st.builds(lambda s, n: s * n, _repeated, st.integers(1, LIMIT // 6)),
    st.builds(lambda s, n: s * n, _repeated, st.integers(1, LIMIT)),
)
_cell = st.one_of(_cells_text, _cells_text, _cells_text, _cells_text, _cells_text, _huge)
_ENCODINGS = ("utf-8",) * 6 + ("latin-1", "cp1252", "bytes", "bytes")  # UTF-16 (NULs) past the sniffed head
_BULK = 100 * 1024  # bytes of plain rows first, in some files: what follows is past the 64 kB a file is sniffed by


@st.composite
def table_cases(draw: st.DrawFn) -> Case:
    suffix = draw(st.sampled_from([".csv", ".tsv"]))
    options: dict[str, Any] = {
        "delimiter": "\t" if suffix == ".tsv" else draw(st.sampled_from(",;|")),
        "quotechar": draw(st.sampled_from("\"'")),
        "doublequote": draw(st.booleans()),
        "escapechar": draw(st.sampled_from([None, "\\"])),
        "quoting": draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC, csv.QUOTE_NONE])),
        "lineterminator": draw(st.sampled_from(["\n", "\r\n", "\r"])),
    }
    names = draw(st.lists(st.text(alphabet=_chars, min_size=1, max_size=6), min_size=1, max_size=4, unique=True))
    if draw(st.booleans()):
        names[0] = "id"
    width = len(names)
    rows = draw(st.lists(st.lists(_cell, min_size=max(0, width - 1), max_size=width + 1), max_size=12))
    rows = rows * draw(st.sampled_from([1, 1, 1, 40]))  # sometimes many times the line limit, for memory
    parts = [_csv_line(names, options).encode()]
    encodings = _encodings(draw)
    if draw(st.integers(0, 3)) == 0:
        bulk = _csv_line(["b" * (LIMIT // (3 * width))] * width, options).encode()
        parts += [bulk] * (_BULK // len(bulk))
        encodings = (*encodings, "utf-16-le")
    for cells in rows:
        text = "" if not cells and draw(st.booleans()) else _csv_line(cells, options)
        parts.append(_encoded(text, draw(st.sampled_from(encodings)), draw(st.randoms(use_true_random=False))))
    data = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + b"".join(parts)
    data, damaged = draw(_damage(data))
    return Case(f"in{suffix}", data, damaged=damaged)


def _encodings(draw: st.DrawFn) -> tuple[str, ...]:
    """Most files are UTF-8; the others mix encodings row by row."""
    return _ENCODINGS if draw(st.integers(0, 2)) == 0 else ("utf-8",)


def _csv_line(cells: list[str], options: dict[str, Any]) -> str:
    for tried in (options, options | {"escapechar": "\\"}, options | {"quoting": csv.QUOTE_MINIMAL}):
        out = io.StringIO()
        try:  # a dialect that cannot write a cell (QUOTE_NONE without an escape char) has it written another way
            csv.writer(out, **tried).writerow(cells)
        except csv.Error:
            continue
        return out.getvalue()
    return ""


def _encoded(text: str, encoding: str, rng: random.Random) -> bytes:
    if encoding == "bytes":  # some of it random bytes, as a damaged or binary file has
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 3)):
            data.insert(rng.randint(0, len(data)), rng.randint(0x80, 0xFF))
        return bytes(data)
    return text.encode(encoding, errors="replace")


@st.composite
def _damage(draw: st.DrawFn, data: bytes) -> tuple[bytes, bool]:
    how = draw(st.sampled_from(["none", "none", "none", "cut", "insert", "nul"]))
    if how == "none" or not data:
        return data, False
    at = draw(st.integers(0, len(data)))
    if how == "cut":
        return data[:at], True
    thrown = draw(st.binary(min_size=1, max_size=8)) if how == "insert" else b"\x00" * draw(st.integers(1, 4))
    return data[:at] + thrown + data[at:], True


# -- JSONL ------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _cells_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_cells_text, inner, max_size=3),
    max_leaves=8,
)


_SCHEMA_WORDS = ["type", "properties", "items", "$ref", "anyOf", "required", "enum", "$defs", "a"]
_schemas = st.one_of(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.sampled_from(["object", "string", "#", "#/$defs/a", "x"]),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_SCHEMA_WORDS), inner, max_size=3),
        max_leaves=10,
    ),
    st.integers(30, 200).map(lambda n: functools.reduce(lambda s, _: {"type": "object", "properties": {"a": s}},
                                                         range(n), {"type": "string"})),
)  # fmt: skip


@st.composite
def _bodies(draw: st.DrawFn, url: str) -> dict[str, Any]:
    """A request body as a line may give it: the fields each API reads, with values a user (or damage) may put."""
    body: dict[str, Any] = {"input": draw(st.one_of(st.just("hi"), _json_values))}
    if "chat" in url or draw(st.booleans()):
        body["messages"] = draw(st.one_of(st.just([{"role": "user", "content": "hi"}]), _json_values))
    for name in draw(st.lists(st.sampled_from(["max_tokens", "temperature", "top_p", "n", "stream"]), max_size=2)):
        body[name] = draw(_json_values)
    if draw(st.booleans()):
        tool = {"type": "function", "name": "f", "parameters": draw(_schemas), "strict": draw(st.booleans())}
        body["tools"] = [tool if "responses" in url else {"type": "function", "function": tool}]
    if draw(st.booleans()):
        body["text"] = {"format": {"type": "json_schema", "name": "x", "schema": draw(_schemas)}}
    if draw(st.integers(0, 3)) == 0:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": draw(_schemas)}}
    return body


@st.composite
def _jsonl_line(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["chat", "record", "batch", "value", "text", "huge", "deep", "blank"]))
    ident = draw(st.one_of(st.none(), st.integers(0, 5), st.text(max_size=3)))
    if kind == "chat":
        obj: Any = {"custom_id": ident, "messages": [{"role": "user", "content": draw(_cells_text)}]}
    elif kind == "record":
        obj = {"id": ident, "text": draw(_cell), "x": draw(_json_values)}
    elif kind == "batch":
        url = draw(st.sampled_from(["/chat/completions", "/v1/embeddings", "/responses", "/nope"]))
        body = {"input": "hi", "messages": [{"x": 1}]} if draw(st.booleans()) else draw(_bodies(url))
        obj = {"custom_id": ident, "method": "POST", "url": url, "body": body}
    elif kind == "value":
        obj = draw(_json_values)
    elif kind == "deep":
        depth = draw(st.integers(200, 600))
        return b'{"id": "d", "x": ' + b"[" * depth + b"]" * depth + b"}"
    else:
        text = {"text": draw(_cells_text), "huge": draw(_huge), "blank": draw(st.sampled_from(["", " ", "\r"]))}
        return text[kind].encode()
    line = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()
    if draw(st.integers(0, 5)) == 0:
        encoding = draw(st.sampled_from([*_ENCODINGS, "utf-16-le"]))
        line = _encoded(line.decode(), encoding, draw(st.randoms(use_true_random=False)))
    return line


@st.composite
def jsonl_cases(draw: st.DrawFn) -> Case:
    lines = draw(st.lists(_jsonl_line(), max_size=15)) * draw(st.sampled_from([1, 1, 1, 40]))
    if draw(st.integers(0, 3)) == 0:
        bulk = json.dumps({"text": "b" * (LIMIT // 3)}).encode()
        lines = [bulk] * (_BULK // len(bulk)) + lines
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + ending.join(lines)
    if lines and draw(st.booleans()):
        data += ending
    data, damaged = draw(_damage(data))
    return Case("in.jsonl", data, damaged=damaged)


# -- Parquet ----------------------------------------------------------------------------------------

_LEAVES: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    (pa.int8(), st.integers(-128, 127)),
    (pa.uint64(), st.integers(0, 2**64 - 1)),
    (pa.float64(), st.floats()),
    (pa.bool_(), st.booleans()),
    (pa.string(), _cells_text),
    (pa.large_string(), _cells_text),
    (pa.binary(), st.binary(max_size=8)),
    (pa.null(), st.none()),
    (pa.decimal128(18, 2), st.integers(-(10**15), 10**15).map(lambda n: Decimal(n).scaleb(-2))),
    (pa.duration("ms"), st.integers(-(2**40), 2**40)),
    (pa.date32(), st.integers(-(2**31), 2**31 - 1)),  # most of them past what Python's dates hold
    (pa.timestamp("us", tz="UTC"), st.integers(-(2**62), 2**62)),
    (pa.time64("us"), st.integers(0, 86_400_000_000 - 1)),
]


def _types(depth: int) -> st.SearchStrategy[tuple[pa.DataType, st.SearchStrategy[Any]]]:
    leaves = st.sampled_from(_LEAVES)
    if depth == 0:
        return leaves
    inner = _types(depth - 1)
    return st.one_of(
        leaves,
        leaves,
        inner.map(lambda t: (pa.list_(t[0]), st.lists(st.none() | t[1], max_size=3))),
        inner.map(lambda t: (pa.map_(pa.string(), t[0]), st.lists(st.tuples(_cells_text, t[1]), max_size=2))),
        st.lists(inner, min_size=1, max_size=3).map(_struct),
    )


def _struct(fields: list[tuple[pa.DataType, st.SearchStrategy[Any]]]) -> tuple[pa.DataType, st.SearchStrategy[Any]]:
    names = [f"f{i}" for i in range(len(fields))]
    kind = pa.struct([(name, t) for name, (t, _) in zip(names, fields, strict=True)])
    return kind, st.fixed_dictionaries({name: s for name, (_, s) in zip(names, fields, strict=True)})


@st.composite
def parquet_cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(0, 60))
    columns: dict[str, pa.Array] = {"_n": pa.array(range(n), pa.int64())}  # each row's place, to check order
    odd = False
    for index in range(draw(st.integers(0, 4))):
        kind, values = draw(_types(draw(st.integers(0, 3))))
        odd |= _may_not_fit_python(kind)
        cells = draw(st.lists(st.none() | values, min_size=n, max_size=n))
        columns[f"c{index}"] = pa.array(cells, kind)
    if n and draw(st.integers(0, 3)) == 0:  # a string column holding bytes that are not UTF-8
        binary = pa.array([draw(st.binary(max_size=6)) for _ in range(n)], pa.binary())
        columns["s"] = pa.Array.from_buffers(pa.string(), n, binary.buffers())
    table = pa.table(columns)
    bad_rows = frozenset(i for i in range(n) if not _row_is_utf8(table, i))
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        row_group_size=draw(st.integers(1, 25)),
        data_page_size=draw(st.sampled_from([64, 512, 1 << 20])),
        compression=draw(st.sampled_from(["NONE", "SNAPPY", "GZIP", "ZSTD"])),
        use_dictionary=draw(st.booleans()),
    )
    data = sink.getvalue()
    how = draw(st.sampled_from(["none", "none", "chunk", "chunk", "flip", "cut"]))
    group = None
    if how == "chunk" and n:
        group, data = _scramble_chunk(data, draw(st.integers(0, 1000)), draw(st.integers(0, 1000)))
    elif how == "flip":
        data = _flip(data, draw(st.integers(0, len(data) - 1)), draw(st.binary(min_size=1, max_size=16)))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    damaged = how != "none" and data != sink.getvalue()
    return Case("in.parquet", data, damaged=damaged, bad_rows=bad_rows, damaged_group=group, odd_values=odd)


def _may_not_fit_python(kind: pa.DataType) -> bool:
    """Dates and timestamps past what Python's ``datetime`` holds (year 1 to 9999), anywhere in the type."""
    if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        return True
    if pa.types.is_struct(kind):
        return any(_may_not_fit_python(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _may_not_fit_python(kind.item_type)
    if pa.types.is_list(kind):
        return _may_not_fit_python(kind.value_type)
    return False


def _row_is_utf8(table: pa.Table, index: int) -> bool:
    """Whether every text and bytes cell of a row is UTF-8 (pyarrow's view, not the reader's)."""
    for column in table.columns:
        cell = column[index]
        if pa.types.is_string(cell.type) or pa.types.is_large_string(cell.type):
            if cell.is_valid and not _is_utf8(cell.as_buffer().to_pybytes()):
                return False
            continue
        try:
            value = cell.as_py()
        except (ValueError, OverflowError):
            continue  # a value Python has no type for: the reader says so, whatever else the row holds
        if any(isinstance(leaf, bytes) and not _is_utf8(leaf) for leaf in _leaves(value)):
            return False
    return True


def _leaves(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        else:
            yield value


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _scramble_chunk(data: bytes, group_pick: int, column_pick: int) -> tuple[int | None, bytes]:
    """XOR one column chunk of one row group: its pages cannot be decoded (or decode to other values)."""
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    if not metadata.num_row_groups:
        return None, data
    group = group_pick % metadata.num_row_groups
    chunk = metadata.row_group(group).column(column_pick % metadata.num_columns)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    scrambled = bytearray(data)
    for at in range(start, min(start + chunk.total_compressed_size, len(data))):
        scrambled[at] ^= 0x5A
    return group, bytes(scrambled)


def _flip(data: bytes, at: int, noise: bytes) -> bytes:
    chunk = data[at : at + len(noise)]
    return data[:at] + bytes(a ^ b for a, b in zip(chunk, noise, strict=False)) + data[at + len(chunk) :]


# -- what the reader makes of a file ----------------------------------------------------------------


@dataclass
class Reading:
    refused: str | None = None  # InputError before anything (sniff, the first lines)
    stopped: str | None = None  # InputError mid-file
    items: list[ParsedLine | BadLine] = field(default_factory=list)
    lines: list[tuple[int, int, bool]] = field(default_factory=list)  # (number, size, blank) of every line read


def _read(path: Path) -> Reading:
    reading = Reading()
    try:
        reader.sniff(path)
        reader.count_lines(path)
        reader.first_lines(path)
    except InputError as exc:
        reading.refused = str(exc)
        return reading
    try:
        reading.items.extend(reader.read_lines(path))
    except InputError as exc:
        reading.stopped = str(exc)
    with path.open("rb") as f, contextlib.suppress(InputError):
        for line_no, raw, size in reader._lines_of(path, f):
            reading.lines.append((line_no, size, isinstance(raw, bytes) and not raw.strip()))
    return reading


def check(case: Case, folder: Path, saw: Check, simulator: Simulator | None = None) -> None:
    """Every invariant on one case: ``saw(invariant, problem)`` for each check."""
    path = folder / case.name
    path.write_bytes(case.data)
    try:
        reading = _read(path)
    except Exception as exc:  # anything but InputError is a traceback for the user
        saw("no traceback", f"{type(exc).__name__}: {exc} at {_where(exc)}")
        return
    saw("no traceback", None)
    for message in filter(None, (reading.refused, reading.stopped)):
        saw("names the file", None if path.name in message else f"the message does not name it: {message[:200]}")
    if reading.refused is None:
        if reader.is_parquet(path):
            _check_parquet(case, path, reading, saw)
        else:
            _check_bytes(path, reading, saw)
    if case.e2e and simulator is not None:
        _check_run(path, reading, saw, simulator)


def _first_lines(exc: BaseException) -> str:
    return " | ".join(traceback.format_exception(exc)[-3:])[-1500:]


def _where(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def _numbers_in_order(items: list[ParsedLine | BadLine]) -> str | None:
    numbers = [item.line_no for item in items]
    return None if numbers == sorted(set(numbers)) and all(n >= 1 for n in numbers) else f"line numbers {numbers[:20]}"


def _check_bytes(path: Path, reading: Reading, saw: Check) -> None:
    """CSV, TSV and JSONL: the lines tile the file; the items are its non-blank lines; one encoding rule."""
    data = path.read_bytes()
    head = len(reader.table_header(path)[2]) if reader.is_table(path) else 0  # row 1 carries a table's header
    saw("exactly once", _numbers_in_order(reading.items))
    sizes = sum(size for _, size, _ in reading.lines) + (0 if reading.lines else head)
    tiled = sizes <= len(data) if reading.stopped else sizes == len(data)
    saw("exactly once", None if tiled else f"the lines' sizes add up to {sizes}, the file is {len(data)} bytes")
    wanted = [n for n, _, blank in reading.lines if not blank]
    got = [item.line_no for item in reading.items]
    saw("exactly once", None if got == wanted else f"lines {got[:12]} came out of non-blank lines {wanted[:12]}")
    saw("exactly once", _resumed_part(path, reading))
    offsets, at = {}, 0
    for n, size, _ in reading.lines:
        offsets[n] = (at, size)
        at += size
    for item in reading.items:
        start, size = offsets[item.line_no]
        own = data[start + (head if item.line_no == 1 else 0) : start + size].removeprefix(b"\xef\xbb\xbf")
        saw("one encoding rule", _encoding_problem(item, own, size > reader.MAX_LINE_BYTES))
    if reader.is_table(path):
        saw("exactly once", _csv_differs(path, data, reading))
    allowed = _HELD_AT_ONCE + _PER_LINE * len(reading.lines)
    if len(data) > 2 * allowed:  # a reader holding the whole file would go past it
        saw("bounded memory", _memory_problem(path, allowed))


def _encoding_problem(item: ParsedLine | BadLine, own: bytes, overlong: bool) -> str | None:
    if overlong:
        return None
    utf8 = _is_utf8(own)
    refused = isinstance(item, BadLine) and item.reason.startswith(NOT_UTF8)
    if utf8 == refused:
        return f"line {item.line_no}: {'UTF-8, refused' if utf8 else 'not UTF-8, taken'}: {own[:60]!r}"
    made_up = isinstance(item, ParsedLine) and any("\ufffd" in text for text in _strings(item.obj))
    if made_up and b"\xef\xbf\xbd" not in own and b"\\ufffd" not in own.lower():
        return f"line {item.line_no}: a U+FFFD the file does not hold: {own[:60]!r}"
    return None


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included, however deep (no recursion)."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _resumed_part(path: Path, reading: Reading) -> str | None:
    """A Batch API part is read from its offset: it must give the lines the whole file gives from there."""
    if len(reading.lines) < 2 or reading.stopped:
        return None
    middle = reading.lines[len(reading.lines) // 2][0]
    offset = dict(reader.line_offsets(path))[middle]
    part = [(i.line_no, type(i).__name__) for i in reader.lines_from(path, offset, middle)]
    whole = [(i.line_no, type(i).__name__) for i in reading.items if i.line_no >= middle]
    duplicates = {i.line_no for i in reading.items if isinstance(i, BadLine) and "duplicate" in i.reason}
    part = [(n, kind) for n, kind in part if n not in duplicates]  # a part does not know the ids before it
    whole = [(n, kind) for n, kind in whole if n not in duplicates]
    return None if part == whole else f"from line {middle}: the part gives {part[:8]}, the file {whole[:8]}"


def _csv_differs(path: Path, data: bytes, reading: Reading) -> str | None:
    """The rows are those Python's csv module reads from the whole text (``newline=""``) in the same dialect."""
    header, dialect, _ = reader.table_header(path)
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    rows = csv.reader(io.StringIO(text, newline=""), dialect)
    next(rows)
    items = {item.line_no: item for item in reading.items}
    last = reading.lines[-1][0] if reading.lines else 0
    number = 0
    for number, cells in enumerate(rows, 1):
        if number > last:
            return None if reading.stopped else f"csv reads a row {number}, the reader stops at {last}"
        item = items.get(number)
        empty = not any(cell.strip() for cell in cells)
        blank = empty and len(cells) <= 1  # a row of delimiters alone (",,") is an input with nothing in it
        if blank != (item is None):
            return f"row {number}: csv reads {cells!r}, the reader {item!r}"[:300]
        if empty and not blank and not (isinstance(item, BadLine) and item.reason == reader.EMPTY_ROW):
            return f"row {number}: csv reads {cells!r} (every cell empty), the reader {item!r}"[:300]
        if isinstance(item, ParsedLine):
            expected: dict[str, Any] = dict(zip(header, cells, strict=False))
            expected |= {name: None for name in header[len(cells) :]}
            if len(cells) > len(header):
                expected["_extra"] = cells[len(header) :]
            if item.obj != expected:
                return f"row {number}: csv reads {expected!r}, the reader {item.obj!r}"[:300]
    return None if number >= last or reading.stopped else f"csv reads {number} rows, the reader {last}"


_HELD_AT_ONCE = 12 * LIMIT + 256 * 1024  # a few lines, and what reading them makes
_PER_LINE = 48  # each line's id digest in the duplicate check (6 bytes in a bucket that grows by blocks)


def _memory_problem(path: Path, allowed: int) -> str | None:
    """Reading holds a few lines at a time, over the fixed cost of any reading (the id set's empty buckets)."""
    other = path.with_name(f"one{path.suffix}")
    other.write_bytes(b"a,b\n1,2\n" if reader.is_table(path) else b'{"id": 1}\n')
    fixed, peak = _peak(other), _peak(path)
    bound = fixed + allowed
    return None if peak < bound else f"reading held {peak:,} bytes at once, over {bound:,}"


def _peak(path: Path) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(InputError):
            for _ in reader.read_lines(path):
                pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _check_parquet(case: Case, path: Path, reading: Reading, saw: Check) -> None:
    """A row per footer row, in order; the good rows in their places; one encoding rule."""
    rows = reader.count_lines(path)
    saw("exactly once", _numbers_in_order(reading.items))
    numbers = [item.line_no for item in reading.items]
    if reading.stopped:  # its pages end before its footer's count: the rows read, in order, and none made up
        saw("exactly once", None if numbers == list(range(1, len(numbers) + 1)) else f"rows {numbers[:12]}")
    else:
        saw("exactly once", None if numbers == list(range(1, rows + 1)) else f"rows {numbers[:12]} of {rows}")
        stored = sum(1 for _ in reader.parquet_lines(path))
        saw("exactly once", None if stored == rows else f"a resume would hash {stored} rows of {rows}")
    for item in reading.items:
        place = item.line_no - 1
        if case.damaged and (case.damaged_group is None or _group_of(path, place) == case.damaged_group):
            continue  # what a damaged page decodes to, if anything, is not known
        if place in case.bad_rows:
            why = item.reason if isinstance(item, BadLine) else ""
            refused = why.startswith(NOT_UTF8) or (case.odd_values and why.startswith("a cell cannot be read"))
            saw("one encoding rule", None if refused else f"row {item.line_no}: not UTF-8, taken: {item!r}"[:300])
        elif isinstance(item, BadLine):
            allowed = case.odd_values and item.reason.startswith("a cell cannot be read")
            saw("exactly once", None if allowed else f"a sound row {item.line_no} refused: {item.reason[:200]}")
        else:
            where = item.obj.get("_n")
            saw("exactly once", None if where == place else f"row {item.line_no} holds row {where}'s cells")


def _group_of(path: Path, place: int) -> int:
    metadata = pq.ParquetFile(path).metadata
    for group in range(metadata.num_row_groups):
        place -= metadata.row_group(group).num_rows
        if place < 0:
            return group
    return -1


# -- whole runs against the simulator ---------------------------------------------------------------


def _check_run(path: Path, reading: Reading, saw: Check, simulator: Simulator) -> None:
    """The CLI, twice: documented exits, no traceback, every answer recorded, every row once, nothing re-sent."""
    results, errors = path.parent / "out.jsonl", path.parent / "out.errors.jsonl"
    args = [str(path), "-q", "--no-progress", "-c", "8", "--template", TEMPLATE, "-o", str(results)]
    args += ["--errors", str(errors)]
    answered = simulator.statuses["200"]
    for attempt in (1, 2):
        out = io.StringIO()
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            code = main(args)
        text = out.getvalue()
        saw("documented exits", None if code in (0, 1, 2) else f"run {attempt} exited {code}: {text[-300:]}")
        broken = "Traceback" in text or "internal error" in text
        saw("no traceback", f"run {attempt}: {text[-600:]}" if broken else None)
        if code == 2:
            saw("names the file", None if path.name in text else f"run {attempt} exit 2 without the file: {text}")
        recorded = _records(results) + _records(errors)
        saw("every answer recorded", _answers_problem(results, simulator.statuses["200"] - answered))
        saw("exactly once", _run_once(recorded, reading, code))
        if attempt == 1:
            first = simulator.statuses["200"]
        elif reading.stopped is None and reading.refused is None:
            again = simulator.statuses["200"] - first
            saw("exactly once", f"the second run was answered {again} more times" if again else None)


def _records(path: Path) -> list[Any]:
    if not path.exists():
        return []
    found = []
    for raw in path.read_bytes().splitlines():
        try:
            found.append(json.loads(raw)["line"])
        except (ValueError, KeyError, TypeError):
            found.append(None)  # not a whole record
    return found


def _answers_problem(results: Path, answered: int) -> str | None:
    recorded = len(_records(results))
    return None if recorded == answered else f"the server answered {answered} times; {recorded} results are recorded"


def _run_once(recorded: list[Any], reading: Reading, code: int) -> str | None:
    if None in recorded:
        return "a line of the outputs is not a whole record"
    if len(recorded) != len(set(recorded)):
        return f"lines recorded twice: {sorted(n for n in recorded if recorded.count(n) > 1)[:8]}"
    lines = {item.line_no for item in reading.items}
    if reading.refused is not None or reading.stopped is not None:
        return None if set(recorded) <= lines else f"records for lines the reader never gave: {recorded[:8]}"
    if code == 2:  # the first lines fail the same way (a setup mistake), or the server refuses them all
        return None if set(recorded) <= lines else f"records for lines the reader never gave: {recorded[:8]}"
    return None if set(recorded) == lines else f"recorded {sorted(recorded)[:10]}, read {sorted(lines)[:10]}"


# -- the driver -------------------------------------------------------------------------------------


def input_files(e2e_share: float) -> st.SearchStrategy[Case]:
    """Any of the files; ``e2e_share`` of them (by a hash of their bytes, so a shrunk case keeps it) run whole."""
    files = st.one_of(table_cases(), table_cases(), jsonl_cases(), parquet_cases(), parquet_cases())
    return files.map(lambda case: dataclasses.replace(case, e2e=zlib.crc32(case.data) % 10_000 < e2e_share * 10_000))


@contextlib.contextmanager
def _fuzzing(e2e: bool) -> Iterator[Simulator | None]:
    """The line limit lowered, and a simulator with the environment pointing at it, for the time of a fuzz."""
    limit, saved = reader.MAX_LINE_BYTES, {name: os.environ.get(name) for name in _ENV}
    reader.MAX_LINE_BYTES = LIMIT
    try:
        if not e2e:
            yield None
            return
        with serve_in_thread(SimConfig(api_key=KEY)) as (url, simulator):
            os.environ.update({_ENV[0]: url, _ENV[1]: KEY, _ENV[2]: "dep"})
            yield simulator
    finally:
        reader.MAX_LINE_BYTES = limit
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_ENV = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT_NAME")


def fuzz(cases: int, seed: int = 0, *, e2e_share: float = 0.01) -> FuzzReport:
    """Try ``cases`` generated input files (and every kept example) against every invariant.

    A case that breaks one is shrunk by hypothesis, and the smallest reported. ``e2e_share`` of the
    cases also run through the CLI against the simulator.
    """
    report = FuzzReport("inputs")
    failures: dict[str, tuple[str, Case]] = {}
    shrinking_until: list[float] = []  # set at the first failure: shrinking gets SHRINK_SECONDS, then stops
    with _fuzzing(e2e_share > 0) as simulator, tempfile.TemporaryDirectory() as root:

        def one(case: Case) -> None:
            if shrinking_until and time.monotonic() > shrinking_until[0]:
                return  # every candidate passes now: the smallest failure so far is kept in ``failures``
            report.cases += 1
            broken: list[tuple[str, str]] = []

            def saw(invariant: str, problem: str | None) -> None:
                report.saw(invariant, None, case)
                if problem is not None:
                    broken.append((invariant, problem))

            with tempfile.TemporaryDirectory(dir=root) as folder:
                check(case, Path(folder), saw, simulator)
            if broken and not shrinking_until:
                shrinking_until.append(time.monotonic() + SHRINK_SECONDS)
            for invariant, problem in broken:
                if invariant not in failures or len(case.data) < len(failures[invariant][1].data):
                    failures[invariant] = (problem, case)  # the smallest: what shrinking ends on
            assert not broken, broken

        test = given(input_files(e2e_share))(one)
        for kept in EXAMPLES:
            test = example(kept)(test)
        options = settings(
            max_examples=cases,
            database=None,
            deadline=None,
            phases=(Phase.explicit, Phase.generate, Phase.shrink),
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        try:
            hypothesis_seed(seed)(options(test))()
        except Exception as exc:  # a failure is in ``failures``, shrunk (hypothesis says "flaky" once cut short)
            if not failures:  # the generators themselves, then
                report.violations.append(f"the fuzz failed: {type(exc).__name__}: {_first_lines(exc)}")
    SHRUNK[:] = [case for _, case in failures.values()]
    for invariant, (problem, case) in sorted(failures.items()):
        report.violations.append(f"{invariant}: {problem} (case: {case!r})")
    return report


SHRUNK: list[Case] = []  # the last fuzz's smallest failing cases, whole: to be kept in EXAMPLES
# Shrunk failures, kept: replayed first by every fuzz (and so by tests/test_fuzz_inputs.py).
EXAMPLES: list[Case] = [
    Case("in.csv", b"0\n"),  # a header and no row: the header's bytes are nobody's line
    # A lone CR inside the read that reached the line limit: the rest of that read was taken for a whole line,
    # so a row past the limit came out as two rows instead of stopping the reading.
    Case("in.csv", b"0,00\n,;;\r,;" + "\u20ac;".encode() * 683 + b"\n"),
    # 3 kB on which csv.Sniffer's regular expressions backtracked for minutes, several times a run.
    Case("in.csv", (Path(__file__).parent / "examples" / "sniffer-minutes.csv").read_bytes()),
    # One quoted empty cell, no delimiter: a blank row as csv reads it ([""]), not a row of empty cells.
    Case("in.tsv", b'J\r""\r'),
    Case("in.csv", b"a,b\n,\n \n"),  # a row of delimiters alone: an error line; a line of spaces: blank
]
