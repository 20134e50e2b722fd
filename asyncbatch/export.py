"""``asyncbatch export``: results and failures as one table, in input order, joined with the input.

Results are written in the order answers came back. Export puts them back in
input order with an external merge sort: lines are read in chunks of at most
``chunk_bytes``, each chunk sorted by its ``line`` and spilled to a temporary
file, and the files merged. Memory is bounded by the chunk size whatever the
number of lines. Joining with ``--input`` is then a merge of two sorted
streams.

Each row is: ``line``, ``status`` (``succeeded`` or ``failed``), ``custom_id``,
the input record's fields (with ``--input``, each keeping its JSON type),
``output``, ``error_code``, ``error_message``, ``attempts``, ``prompt_tokens``
and ``completion_tokens``. For CSV and Parquet an object ``output`` becomes one
``output.<key>`` column per key, in its place (``_columns``). A CSV text cell a spreadsheet would run as a
formula gets a ``'`` before it (``keep_formulas`` leaves it); Parquet keeps values
as they are.

No temporary file outlives the process: the chunks are files without a name, and
the output has none until it is complete (``store.files.atomic_file``).
"""

from __future__ import annotations

import functools
import heapq
import os
import re
import tempfile
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from .errors import ConfigError
from .input.reader import input_records
from .store.files import atomic_file, scratch_name, sweep_stale

Format = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet")
CHUNK_BYTES = 32 * 1024 * 1024
_KEY = 12  # digits of the zero-padded line number that prefixes each spilled line, so bytes sort by line
STATUS = {b"r": "succeeded", b"e": "failed"}
RESULT_FIELDS = ("output", "error_code", "error_message", "attempts", "prompt_tokens", "completion_tokens")


@dataclass
class ExportReport:
    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0  # a line number seen twice (never written by asyncbatch): the later ones are left out
    unreadable: int = 0  # output lines that are not JSON objects with a ``line`` (a torn last line)
    missing: int = 0  # with --input: input lines with no result or failure yet (an unfinished run)
    notes: list[str] = field(default_factory=list)


def format_for(path: Path | None, given: str | None) -> Format:
    if given is not None:
        if given not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (got {given!r})")
        return given
    suffix = path.suffix.lstrip(".").lower() if path else ""
    return suffix if suffix in ("csv", "parquet") else "jsonl"  # type: ignore[return-value]


def _tagged(path: Path, tag: bytes, report: ExportReport) -> Iterator[bytes]:
    """Each line of an output file, prefixed with its zero-padded input line number and ``tag``."""
    with path.open("rb") as f:
        for raw in f:
            try:
                obj = orjson.loads(raw)
                line_no = obj["line"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                report.unreadable += 1
                continue
            if type(line_no) is not int or line_no < 0:
                report.unreadable += 1
                continue
            yield b"%0*d" % (_KEY, line_no) + tag + raw.rstrip(b"\r\n") + b"\n"


def _in_order(sources: Iterable[Iterator[bytes]], chunk_bytes: int, stack: ExitStack) -> Iterator[bytes]:
    """The tagged lines of every source, sorted by line number, holding at most ``chunk_bytes`` in memory."""
    runs: list[IO[bytes]] = []
    chunk: list[bytes] = []
    size = 0
    for source in sources:
        for item in source:
            chunk.append(item)
            size += len(item)
            if size >= chunk_bytes:
                runs.append(_spill(chunk, stack))
                chunk, size = [], 0
    chunk.sort()
    if not runs:
        return iter(chunk)
    runs.append(_spill(chunk, stack))
    return heapq.merge(*runs)


def _spill(chunk: list[bytes], stack: ExitStack) -> IO[bytes]:
    """A sorted chunk in a temporary file without a name (none outlives the process, however it ends)."""
    chunk.sort()
    f = stack.enter_context(tempfile.TemporaryFile(prefix="asyncbatch-export-"))  # noqa: SIM115 (the stack closes it)
    f.writelines(chunk)
    f.seek(0)
    chunk.clear()
    return f


def row_of(tag: bytes, record: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    error = record.get("error") or {}
    response = record.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    usage = body.get("usage") if isinstance(body, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    row: dict[str, Any] = {"line": record["line"], "status": STATUS[tag], "custom_id": record.get("custom_id")}
    for name, value in (fields or {}).items():
        row[input_column(name, row)] = value
    row.update(
        output=record.get("output"),
        error_code=error.get("code") if isinstance(error, dict) else None,
        error_message=error.get("message") if isinstance(error, dict) else None,
        attempts=record.get("attempts"),
        prompt_tokens=usage.get("prompt_tokens", usage.get("input_tokens")),
        completion_tokens=usage.get("completion_tokens", usage.get("output_tokens")),
    )
    return row


def input_column(name: str, taken: Container[str]) -> str:
    """An input field's column: its name, prefixed ``input_`` (again, until it is free) where a row field has it
    (or a column ``taken`` before it).

    ``output.<key>`` is a row field's name too: an object output is spread over such columns, which would
    otherwise take the input's place (an exported table run again, its old answers in ``output.label``), and
    show a failed row's input as its answer.
    """
    while name in taken or name in RESULT_FIELDS or name.startswith("output."):
        name = f"input_{name}"
    return name


class Rows:
    """The export's rows, which can be read more than once (CSV and Parquet read them twice: columns, then rows)."""

    def __init__(
        self,
        results: Path,
        errors: Path | None,
        input_path: Path | None,
        ordered: bool,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.results, self.errors, self.input_path = results, errors, input_path
        self.ordered = ordered or input_path is not None  # a join walks both files in line order
        self.chunk_bytes = chunk_bytes
        self.report = ExportReport()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.report = report = ExportReport()
        with ExitStack() as stack:
            sources = [_tagged(self.results, b"r", report)]
            if self.errors is not None:
                sources.append(_tagged(self.errors, b"e", report))
            if self.ordered:
                lines: Iterable[bytes] = _in_order(sources, self.chunk_bytes, stack)
            else:
                lines = (item for source in sources for item in source)
            yield from self._rows(lines, report)

    def _rows(self, lines: Iterable[bytes], report: ExportReport) -> Iterator[dict[str, Any]]:
        inputs = input_records(self.input_path) if self.input_path is not None else None
        previous = -1
        for item in lines:
            line_no = int(item[:_KEY])
            if self.ordered and line_no == previous:
                report.duplicates += 1
                continue
            previous = line_no
            fields = None
            if inputs is not None:
                fields = {}
                for input_no, record in inputs:
                    if input_no == line_no:
                        fields = record
                        break
                    report.missing += bool(record)
            tag = item[_KEY : _KEY + 1]
            report.rows += 1
            report.succeeded += tag == b"r"
            report.failed += tag == b"e"
            yield row_of(tag, orjson.loads(item[_KEY + 1 :]), fields)
        if inputs is not None:
            report.missing += sum(1 for _, record in inputs if record)


def export(
    rows: Rows, fmt: Format, out: Path | None, stdout: IO[bytes], *, keep_formulas: bool = False
) -> ExportReport:
    """Write ``rows`` as ``fmt`` to ``out`` (whole or not at all: a temporary file renamed) or to ``stdout``.

    :param keep_formulas: CSV: write text cells that begin with ``= + - @`` (fullwidth too, after any
        spaces), a tab, a carriage return or a line feed as they are. By default a ``'`` goes before them,
        so that a spreadsheet opening the file shows them as text instead of running them as formulas (the
        OWASP rule against CSV injection).
    """
    writers: dict[str, Callable[[Rows, IO[bytes]], None]] = {
        "jsonl": _write_jsonl,
        "csv": functools.partial(_write_csv, keep_formulas=keep_formulas),
        "parquet": _write_parquet,
    }
    write = writers[fmt]
    if out is None:
        if fmt == "parquet":
            raise ConfigError("--format parquet needs -o PATH (it is not a text format for a terminal or pipe)")
        write(rows, stdout)
        return rows.report
    check_output(out)
    sweep_stale(out)  # what an export killed before it finished left, if the file system keeps no unnamed files
    with atomic_file(out, scratch_name(out)) as f:  # 0600, as every output: answers may be private
        write(rows, f)
    return rows.report


def check_output(out: Path) -> None:
    """:raises ConfigError: ``out`` is a symbolic link (replaced, it would no longer point where it did, and a
    link's target is not ours to write)."""
    if out.is_symlink():
        raise ConfigError(
            f"-o {out} is a symbolic link (to {os.readlink(out)}); export does not write through links, and its "
            "target is left alone. HINT: give the target's own path, or remove the link"
        )


def _write_jsonl(rows: Rows, f: IO[bytes]) -> None:
    for row in rows:
        f.write(orjson.dumps(row) + b"\n")


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """``output`` spread over columns in its place when it is an object (one level: deeper values stay whole)."""
    output = row.get("output")
    if not isinstance(output, dict):
        return row
    spread: dict[str, Any] = {}
    for name, value in row.items():
        if name == "output":
            spread.update((f"output.{key}", item) for key, item in output.items())
        else:
            spread[name] = value
    return spread


HEAD, TAIL = ("line", "status", "custom_id"), RESULT_FIELDS[1:]


def _columns(rows: Rows, kinds: dict[str, set[str]] | None = None) -> list[str]:
    """Every column in the documented order, with the JSON kinds of its values (for Parquet's types).

    ``line, status, custom_id``, the input's fields, the output (``output``, or one ``output.<key>`` per
    key of an object output), then ``error_code, error_message, attempts, prompt_tokens, completion_tokens``;
    in first-seen order within each. ``output`` itself only when some output is not an object (or none is
    one): never a column that every row leaves empty because every answer was spread.
    """
    fields: dict[str, None] = {}
    spread: dict[str, None] = {}
    plain = objects = False
    for row in rows:
        output = row.get("output")
        objects |= isinstance(output, dict)
        plain |= output is not None and not isinstance(output, dict)
        for name, value in flat(row).items():
            if name.startswith("output."):
                spread.setdefault(name)
            elif name not in HEAD and name not in RESULT_FIELDS:
                fields.setdefault(name)
            if kinds is not None and value is not None:
                kinds.setdefault(name, set()).add(_kind(value))
    outputs = ["output"] if plain or not objects else []
    return [*HEAD, *fields, *outputs, *spread, *TAIL]


INT64 = range(-(2**63), 2**63)  # Parquet's integers; JSON's (and orjson's, to 2**64 - 1) go further
EXACT = range(-(2**53), 2**53 + 1)  # the integers a float64 holds exactly


def _kind(value: Any) -> str:
    """The JSON kind of a value, as Parquet can hold it exactly: ``wide``, an integer a float64 would round;
    an integer past int64 is ``json`` (kept as text), and so is a list of numbers holding one a float64 would round.
    """
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if value in EXACT else "wide" if value in INT64 else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list) and all(_as_float(v) for v in value):
        return "vector"
    return "json"


def _as_float(value: Any) -> bool:
    """Whether a float64 holds ``value`` exactly."""
    return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and value in EXACT)


# What makes a spreadsheet read a cell as a formula: ``= + - @`` (OWASP), after anything spreadsheets skip (any
# Unicode space, U+3000 too, a BOM or zero-width character, line breaks), their fullwidth forms (East Asian
# spreadsheets take U+FF1D as ``=``), and a cell that begins with a tab, a carriage return or a line feed.
_FORMULA = re.compile(r"[\s\ufeff\u200b-\u200d\u2060]*[=+\-@\uff1d\uff0b\uff0d\uff20]|[\t\r\n]")


def _cell(value: Any, keep_formulas: bool = False) -> Any:
    """A CSV cell: objects and lists as JSON text; text that a spreadsheet would run, quoted with a ``'``.

    Numbers stay numbers: only text (from the input or the answer) can hold a formula.
    """
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if isinstance(value, str) and not keep_formulas and _FORMULA.match(value):
        return "'" + value
    return value


def _text(value: Any) -> str:
    """A Parquet text cell: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _write_csv(rows: Rows, f: IO[bytes], keep_formulas: bool = False) -> None:
    import csv
    import io

    columns = _columns(rows)
    text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=True)
    try:
        writer = csv.writer(text)
        writer.writerow([_cell(name, keep_formulas) for name in columns])  # an input's field names too
        for row in rows:
            cells = flat(row)
            writer.writerow(["" if (v := cells.get(name)) is None else _cell(v, keep_formulas) for name in columns])
    finally:
        text.detach()


def _write_parquet(rows: Rows, f: IO[bytes], batch: int = 10_000) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError('--format parquet needs pyarrow: pip install "asyncbatch[parquet]"') from None
    kinds: dict[str, set[str]] = {}
    columns = _columns(rows, kinds)
    types = {name: _arrow_type(pa, kinds.get(name, set())) for name in columns}
    schema = pa.schema([(name, types[name]) for name in columns])
    convert: dict[str, Callable[[Any], Any]] = {
        name: (_text if types[name] == pa.string() else _same) for name in columns
    }
    with pq.ParquetWriter(f, schema) as writer:
        pending: list[dict[str, Any]] = []
        for row in rows:
            cells = flat(row)
            pending.append({k: None if (v := cells.get(k)) is None else convert[k](v) for k in columns})
            if len(pending) >= batch:
                writer.write_batch(pa.RecordBatch.from_pylist(pending, schema=schema))
                pending = []
        if pending or rows.report.rows == 0:
            writer.write_batch(pa.RecordBatch.from_pylist(pending, schema=schema))


def _same(value: Any) -> Any:
    return value


def _arrow_type(pa: Any, kinds: set[str]) -> Any:
    """One column type for the kinds of values seen: numbers widen to float (where no value would be rounded),
    anything mixed is JSON text."""
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds and kinds <= {"int", "wide"}:
        return pa.int64()
    if kinds and kinds <= {"int", "float"}:
        return pa.float64()
    if kinds == {"vector"}:
        return pa.list_(pa.float64())
    return pa.string()
