"""The input-file boundary: no byte of an input file crashes a run or loses a paid answer.

End to end (the CLI against the simulator): a CSV field past the csv module's 128 KiB default, a
Parquet row group that cannot be decoded, a row in Latin-1, and a row whose end cannot be trusted
(a clean stop, resumed once the file is fixed). Then the reader alone, case by case.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.config import default_errors, default_output
from asyncbatch.errors import ConfigError, InputError
from asyncbatch.input import reader
from asyncbatch.input.reader import BadLine, ParsedLine, count_lines, parquet_lines, read_lines, sniff
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import read_jsonl, simulator_env

inputs_examples = Path(__file__).parent / "fuzz" / "examples"

KEY = "boundary-key-0123456789"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with simulator_env(SimConfig(api_key=KEY, latency=0.005), monkeypatch) as (_, simulator):
        yield simulator


def _table(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _recorded(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a run of the input ``path`` recorded, in its default outputs."""
    results = default_output(path)
    return read_jsonl(results), read_jsonl(default_errors(results))


def _once(*outputs: list[dict[str, Any]]) -> list[int]:
    """The line numbers recorded, sorted; each must be recorded once."""
    lines = sorted(record["line"] for records in outputs for record in records)
    assert len(lines) == len(set(lines)), "a line recorded twice"
    return lines


def _damage_row_group(path: Path, group: int = -1, column: int = 1) -> None:
    """Scramble one column chunk of a row group (the last by default): its pages cannot be decoded; the footer
    is intact."""
    metadata = pq.ParquetFile(path).metadata
    chunk = metadata.row_group(group % metadata.num_row_groups).column(column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    for at in range(start, start + chunk.total_compressed_size):
        data[at] ^= 0x5A
    path.write_bytes(bytes(data))


# -- end to end -------------------------------------------------------------------------------------


def test_a_3001_row_csv_whose_last_row_holds_a_200_kb_field_runs_every_row_and_records_every_answer(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "text": f"row {i}"} for i in range(3000)]
    rows.append({"id": "long", "text": "a long document, " * 12_000})  # 204,000 bytes in one cell
    path = _table(tmp_path / "in.csv", rows)
    args = [str(path), "-q", "-c", "50", "--template", "{text}"]
    assert main(args) == 0
    results, errors = _recorded(path)
    assert _once(results, errors) == list(range(1, 3002)) and not errors
    assert sim.statuses["200"] == len(results) == 3001  # every answer the server gave is recorded
    long = next(r for r in results if r["custom_id"] == "long")
    assert sim.answered[rows[-1]["text"]] == 1 and long["line"] == 3001  # the whole field was sent
    assert main(args) == 0 and sim.requests == 3001  # a second run sends nothing more
    assert "Traceback" not in capsys.readouterr().err


def test_a_parquet_file_whose_last_row_group_cannot_be_decoded_finishes_the_others_and_names_the_rows(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pa.Table.from_pylist([{"id": f"r{i}", "text": f"row {i}"} for i in range(300)])
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=100)
    _damage_row_group(path)
    args = ["in.parquet", "-q", "-c", "20", "--template", "{text}"]
    assert main(args) == 1
    results, errors = _recorded(path)
    assert _once(results, errors) == list(range(1, 301))
    assert sorted(r["line"] for r in results) == list(range(1, 201))  # the good row groups, finished
    assert sim.statuses["200"] == len(results) == 200  # every answer the server gave is recorded
    for error in errors:
        message = error["error"]["message"]
        assert error["error"]["code"] == "invalid_input" and message.startswith(f"in.parquet:{error['line']}: ")
        assert "row group 3 cannot be decoded" in message and "HINT: write the file again" in message
    assert main(args) == 1 and sim.requests == 200  # again: no traceback, nothing sent again
    assert "Traceback" not in capsys.readouterr().err
    pq.write_table(table, path, row_group_size=100)  # written again from its source: its last rows run
    assert main(args) == 0 and sim.requests == 300
    results, errors = _recorded(path)
    assert sorted(r["line"] for r in results) == list(range(1, 301)) and not errors


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_latin_1_row_is_refused_by_name_in_every_format_and_the_others_run(
    tmp_path: Path, sim: Simulator, suffix: str
) -> None:
    texts = ["hello", "café au lait", "bye"]
    if suffix == ".jsonl":
        lines = [json.dumps({"id": f"r{i}", "text": text}, ensure_ascii=False) for i, text in enumerate(texts)]
    else:
        sep = "\t" if suffix == ".tsv" else ","
        lines = [f"id{sep}text"] + [f"r{i}{sep}{text}" for i, text in enumerate(texts)]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data.replace("café".encode(), "café".encode("latin-1")))  # one row saved in Latin-1
    assert main([path.name, "-q", "--template", "{text}"]) == 1
    results, errors = _recorded(path)
    assert sorted(r["custom_id"] for r in results) == ["r0", "r2"]
    (error,) = errors
    assert (error["line"], error["custom_id"], error["error"]["code"]) == (2, "line-2", "invalid_input")
    assert re.fullmatch(
        rf"in{re.escape(suffix)}:2: not UTF-8 text \(byte 0xE9 after '.*caf'\); asyncbatch reads UTF-8\. "
        r"HINT: save the file as UTF-8, or convert it, .*",
        error["error"]["message"],
    )
    assert sim.requests == 2 and not any("\ufffd" in text for text in sim.answered)  # nothing sent garbled


def test_a_row_whose_end_cannot_be_trusted_stops_the_run_cleanly_and_the_same_command_finishes_once_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 4096)
    rows = [f"r{i},row {i} {'.' * 100}\n" for i in range(1, 201)]
    rows[149] = 'r150,"row 150 opens a quote that never closes\n'  # the rest of the file is one 5.5 kB cell
    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "".join(rows), encoding="utf-8")
    args = [str(path), "-q", "-c", "20", "--template", "{text}"]
    with simulator_env(SimConfig(api_key=KEY, latency=0.1), monkeypatch) as (_, simulator):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "answers in flight" in err  # the stop came while requests were on their way ...
        results, errors = _recorded(path)
        assert simulator.statuses["200"] == len(results) > 0 and not errors  # ... and every answer was recorded
        assert max(_once(results)) < 150
        assert f"{path}: row 150 is longer than 4,096 bytes" in err and "HINT: fix row 150" in err
        assert "Traceback" not in err
        assert main(args) == 2 and simulator.statuses["200"] == len(_recorded(path)[0])
        path.write_text(path.read_text().replace("never closes\n", 'never closes"\n'), encoding="utf-8")
        assert main(args) == 0
        results, errors = _recorded(path)
        assert _once(results, errors) == list(range(1, 201)) and not errors
        assert simulator.statuses["200"] == 200  # nothing paid for twice


# -- the reader -------------------------------------------------------------------------------------


def _items(path: Path) -> list[ParsedLine | BadLine]:
    return list(read_lines(path))


def _sizes_tile(path: Path) -> bool:
    """Every byte of the file belongs to exactly one line or row."""
    offsets = [offset for _, offset in reader.line_offsets(path)]
    with path.open("rb") as f:
        sizes = [size for _, _, size in reader._lines_of(path, f)]
    return sum(sizes) == path.stat().st_size and offsets == [sum(sizes[:i]) for i in range(len(sizes))]


def test_csv_cells_of_any_size_up_to_the_line_limit_and_rows_that_tile_the_file(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    cell = ("x" * 99 + "\n") * 2_000  # 200 kB, past the csv module's default limit of 128 KiB, on 2,000 lines
    path.write_text(f'id,text\na,"{cell}"\nb,short\n', encoding="utf-8")
    items = _items(path)
    assert [(i.line_no, i.custom_id) for i in items] == [(1, "a"), (2, "b")]
    assert isinstance(items[0], ParsedLine) and items[0].obj["text"] == cell
    assert _sizes_tile(path)


def test_rows_end_at_lf_crlf_or_a_lone_cr_as_python_reads_a_csv_file(tmp_path: Path) -> None:
    data = b'id,text\ra,one\rb,"two\rlines"\r\nc,three\r\r\nd,"x\ny"\ne,last'  # a classic Mac export, mixed
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    header, *rows = csv.reader(io.StringIO(data.decode(), newline=""))
    expected = [dict(zip(header, row, strict=True)) for row in rows if row]
    items = _items(path)
    assert [i.obj for i in items if isinstance(i, ParsedLine)] == expected and len(items) == 5
    assert [i.line_no for i in items] == [1, 2, 3, 5, 6]  # row 4 is blank
    assert _sizes_tile(path)


def test_a_csv_row_past_the_line_limit_ends_the_reading_naming_it_after_every_row_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 100)
    path = tmp_path / "in.tsv"
    path.write_text("id\ttext\na\tone\nb\t" + "y" * 150 + "\nc\tthree\n", encoding="utf-8")
    seen: list[int] = []
    with pytest.raises(InputError, match=r"in\.tsv: row 2 is longer than 100 bytes.*HINT: fix row 2"):
        seen.extend(item.line_no for item in read_lines(path))
    assert seen == [1]
    assert issubclass(InputError, ConfigError)  # the CLI's exit 2, and any caller's except ConfigError


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"id,t\xe9xt\na,b\n", r"its header row is not UTF-8 text \(byte 0xE9"),
        (b'id,"text\n' + b"x" * 200 + b"\n", "its header row is longer than 100 bytes"),
    ],
)
def test_a_header_that_cannot_be_read_refuses_the_file_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, expected: str
) -> None:
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 100)
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        sniff(path)


def test_a_bom_counts_only_at_the_start_of_a_table(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text\na,one\n\xef\xbb\xbfb,two\n")
    items = _items(path)
    assert [i.custom_id for i in items] == ["a", "\ufeffb"]  # mid-file, a BOM is the cell's text
    assert _sizes_tile(path)


class _FailingFile(io.BytesIO):
    """A file whose disk fails after ``good`` bytes (EIO): what a dying disk or a lost share gives."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self.good = good

    def readline(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.good:
            raise OSError(errno.EIO, "Input/output error")
        return super().readline(size)


@pytest.mark.parametrize("name", ["in.jsonl", "in.csv"])
def test_a_read_error_mid_file_is_an_input_error_naming_the_file_after_every_line_before(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    data = b"id,text\na,one\nb,two\nc,three\n" if name.endswith(".csv") else b'{"id": 1}\n{"id": 2}\n{"id": 3}\n'
    path.write_bytes(data)
    seen: list[int] = []
    with pytest.raises(InputError, match=rf"cannot read .*{name}: Input/output error\..*HINT: make the file"):
        seen.extend(line_no for line_no, _, _ in reader._lines_of(path, _FailingFile(data, data.index(b"\n") + 1)))
    assert seen == ([] if name.endswith(".csv") else [1])


def _parquet(path: Path, table: pa.Table, **options: Any) -> Path:
    pq.write_table(table, path, **options)
    return path


def test_a_parquet_row_group_that_cannot_be_decoded_is_its_rows_bad_lines_and_the_others_are_read(
    tmp_path: Path,
) -> None:
    table = pa.Table.from_pylist([{"id": f"r{i}", "text": f"row {i}"} for i in range(30)])
    path = _parquet(tmp_path / "in.parquet", table, row_group_size=10)
    intact = list(parquet_lines(path))
    _damage_row_group(path, group=1)  # the middle one
    items = _items(path)
    assert [i.line_no for i in items] == list(range(1, 31)) and count_lines(path) == 30
    bad = [i for i in items if isinstance(i, BadLine)]
    assert [i.line_no for i in bad] == list(range(11, 21))
    assert all("row group 2 cannot be decoded" in i.reason and i.line_hash for i in bad)
    lines = list(parquet_lines(path))  # what a resume hashes: the same rows, stand-ins for the lost ones
    assert lines[:10] == intact[:10] and lines[20:] == intact[20:]
    assert lines[10:20] == [b"\x00row %d\n" % n for n in range(11, 21)]


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string column holding bytes that are not UTF-8, as a writer that does not check would leave it."""
    binary = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(values), binary.buffers())


def test_parquet_cells_follow_the_one_encoding_rule_and_a_cell_python_cannot_hold_fails_its_row_only(
    tmp_path: Path,
) -> None:
    table = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "text": _invalid_utf8_strings([b"ok", b"caf\xe9", b"fine", b"also"]),
            "blob": pa.array([b"bytes", b"text", b"\xff\xfe", b"t"], pa.binary()),
            "day": pa.array([0, 1, 2, 2**31 - 1], pa.date32()),  # the last is past year 9999
        }
    )
    path = _parquet(tmp_path / "in.parquet", table)
    items = _items(path)
    assert [(i.line_no, type(i).__name__) for i in items] == [
        (1, "ParsedLine"),
        (2, "BadLine"),
        (3, "BadLine"),
        (4, "BadLine"),
    ]
    assert isinstance(items[0], ParsedLine) and items[0].obj["blob"] == "bytes"  # UTF-8 bytes are text
    assert items[1].reason.startswith("not UTF-8 text (byte 0xE9 after 'caf')")  # the same words as JSONL's
    assert items[2].reason.startswith("not UTF-8 text (byte 0xFF")
    assert items[3].reason.startswith("a cell cannot be read: ")
    for item in items[1:3]:  # re-encoded by what wrote it: iconv is for text files
        assert "HINT: write the Parquet file again from its source" in item.reason and "iconv -f" not in item.reason


@pytest.mark.parametrize("depth", [90, 300])
def test_nested_parquet_cells_are_json_within_what_pyarrow_reads_and_refused_by_name_past_it(
    tmp_path: Path, depth: int
) -> None:
    nested: Any = pa.int64()
    value: Any = 1
    for _ in range(depth):
        nested, value = pa.struct([("x", nested)]), {"x": value}
    path = _parquet(tmp_path / "in.parquet", pa.table({"id": ["a", "b"], "deep": pa.array([value, None], nested)}))
    if depth > 100:  # pyarrow reads a schema nested 100 deep at most, far within what JSON is written at
        with pytest.raises(InputError, match=r"in\.parquet is not a Parquet file pyarrow can read: .*too deeply"):
            sniff(path)
        return
    items = _items(path)
    assert isinstance(items[0], ParsedLine) and json.dumps(items[0].obj["deep"]).count("{") == depth
    assert isinstance(items[1], ParsedLine) and items[1].obj["deep"] is None


def test_a_parquet_footer_whose_counts_do_not_add_up_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "in.parquet", pa.table({"id": ["a", "b"]}))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"in\.parquet is not a Parquet file pyarrow can read.*HINT"):
        sniff(path)


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (".csv", "id;text\nr1;a,b\n", {"id": "r1", "text": "a,b"}),
        (".csv", 'id|text\nr1|"a|b"\n', {"id": "r1", "text": "a|b"}),
        (".csv", "id, text\nr1, a\n", {"id": "r1", "text": "a"}),  # a space always after the delimiter
        (".csv", "'id','text'\n'r1','a,b'\n", {"id": "r1", "text": "a,b"}),  # every cell quoted with '
        (".csv", "id,text\nr1,'tis\n", {"id": "r1", "text": "'tis"}),  # a ' that begins a text is no quote
        (".csv", 'id,text\nr1,"say ""hi"", twice"\n', {"id": "r1", "text": 'say "hi", twice'}),
        (".tsv", "id\ttext\nr1\ta, b; c\n", {"id": "r1", "text": "a, b; c"}),
    ],
)
def test_the_dialect_is_told_from_the_first_lines(
    tmp_path: Path, suffix: str, text: str, expected: dict[str, str]
) -> None:
    path = tmp_path / f"in{suffix}"
    path.write_text(text, encoding="utf-8")
    (item,) = _items(path)
    assert isinstance(item, ParsedLine) and item.obj == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(st.sampled_from("ab '\","), max_size=8), min_size=1, max_size=6))
@example(texts=["'tis", "plain", "it's"])  # was: ' taken for the quote, rows 1 to 3 merged into one
@example(texts=["'=1+1", "x'"])
def test_no_row_of_a_csv_written_by_the_csv_module_merges_into_another(tmp_path: Path, texts: list[str]) -> None:
    path = tmp_path / "gen.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([f"r{i}", text] for i, text in enumerate(texts))
    items = _items(path)
    assert [item.obj for item in items if isinstance(item, ParsedLine)] == [
        {"id": f"r{i}", "text": text} for i, text in enumerate(texts)
    ]


def test_the_dialect_of_a_file_that_kept_csv_sniffer_busy_for_minutes_is_told_at_once() -> None:
    """Python's csv.Sniffer backtracks: on these 3 kB (found by tests/fuzz/inputs.py) it ran for minutes."""
    sample = inputs_examples / "sniffer-minutes.csv"
    items = _items(sample)
    assert [item.line_no for item in items] == sorted({item.line_no for item in items}) and len(items) > 100
