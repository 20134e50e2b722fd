"""CSV and TSV files as input: the same results as the records file, resumable after kill -9, errors by row."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncbatch.cli.main import main
from asyncbatch.input.reader import count_lines, read_lines
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import read_jsonl, simulator_env, write_jsonl

KEY = "tables-key-0123456789"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO = ["--template", "Tell me about {company}. Notes: {notes}", "--tools", str(EXAMPLES / "get_company_info.json")]


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY), monkeypatch) as served:
        yield served


def _table(path: Path, rows: list[dict[str, object]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _answers(path: Path) -> list[tuple[str, str, int]]:
    return sorted((r["custom_id"], json.dumps(r["output"], sort_keys=True), r["line"]) for r in read_jsonl(path))


def test_a_csv_and_a_tsv_of_the_records_give_the_records_files_results(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    records = read_jsonl(EXAMPLES / "companies.jsonl")
    write_jsonl(tmp_path / "records.jsonl", records)
    _table(tmp_path / "records.csv", records)
    _table(tmp_path / "records.tsv", records, delimiter="\t")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "records.parquet")
    for name in ("records.jsonl", "records.csv", "records.tsv", "records.parquet"):
        assert main([name, "-q", "-o", f"{name}.results.jsonl", *DEMO]) == 0
    expected = _answers(tmp_path / "records.jsonl.results.jsonl")
    assert len(expected) == 24 and expected[0][0] == "co-001"
    assert _answers(tmp_path / "records.csv.results.jsonl") == expected
    assert _answers(tmp_path / "records.tsv.results.jsonl") == expected
    assert _answers(tmp_path / "records.parquet.results.jsonl") == expected
    assert main(["records.csv", "-q", "-o", "records.csv.results.jsonl", *DEMO]) == 0  # done: nothing sent again
    assert len(read_jsonl(tmp_path / "records.csv.results.jsonl")) == 24


def test_quoted_newlines_short_and_long_rows_blank_rows_and_errors_named_by_row(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.csv"
    path.write_text('company,notes\n"Acme\nInc",first\nGlobex\n\nInitech,x,extra\n,no company\n', encoding="utf-8")
    assert main([str(path), "-q", "--template", "About {company}: {notes}"]) == 1
    results = {r["line"]: r for r in read_jsonl(tmp_path / "in.csv.results.jsonl")}
    assert results[1]["custom_id"] == "line-1"  # no id column: the row number names it
    assert "About Acme\nInc: first" in json.dumps(results[1]["output"]).replace("\\n", "\n")
    assert "About Initech: x" in results[4]["output"]  # a long row keeps its extra cells under _extra
    assert 3 not in results  # a blank row is no input
    assert sorted(results) == [1, 4, 5]
    (error,) = read_jsonl(tmp_path / "in.csv.results.errors.jsonl")  # a short row: the missing cell is null
    assert error["error"]["message"] == f"{path}:2: template field 'notes' is null (empty in the table)"
    path.write_text("company,notes\nAcme,a\nGlobex,b\n", encoding="utf-8")  # a field no row has: one error
    assert main([str(path), "-q", "--restart", "--template", "About {company} {size}"]) == 2
    assert "template field 'size' is missing" in capsys.readouterr().err
    path.write_text("company,notes,size\nAcme,a,\nGlobex,b,2\n", encoding="utf-8")
    args = [str(path), "-q", "--restart", "--template", "About {company} {size}", "-o", "sized.jsonl"]
    assert main(args) == 0  # an empty cell is an empty string, not a missing field


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"company,company\nA,B\n", "needs a header row naming every column once"),
        (b",notes\nA,B\n", "needs a header row naming every column once"),
        ("company\nAcme\n".encode("utf-16"), "UTF-16 text"),
        (b"company\nAc\x00me\n", "NUL bytes"),
    ],
)
def test_a_table_without_a_usable_header_or_in_another_encoding_is_refused_before_anything(
    tmp_path: Path,
    sim: tuple[dict[str, str], Simulator],
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    expected: str,
) -> None:
    (tmp_path / "in.csv").write_bytes(content)
    code = main([str(tmp_path / "in.csv"), "-q", "--template", "{company}"])
    assert expected in capsys.readouterr().err and code == (0 if expected == "is empty" else 2)
    assert sim[1].requests == 0 and not list(tmp_path.glob("in*.results*"))


def test_rows_appended_to_a_table_are_the_only_ones_sent_and_an_edited_one_is_refused(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    rows = [{"id": i, "text": f"t{i}"} for i in range(50)]
    path = _table(tmp_path / "in.csv", rows)
    args = [str(path), "-q", "--template", "Say {text}"]
    assert main(args) == 0 and simulator.requests == 50
    with path.open("a", encoding="utf-8") as f:
        f.write("50,t50\n51,t51\n")
    assert main(args) == 0 and simulator.requests == 52
    assert sorted(int(r["custom_id"]) for r in read_jsonl(tmp_path / "in.csv.results.jsonl")) == list(range(52))
    path.write_text(path.read_text().replace("t3\n", "t3 edited\n"))
    assert main(args) == 2 and simulator.requests == 52
    err = capsys.readouterr().err
    assert "in.csv changed at row 4, and its answer is recorded (rows may be appended" in err  # named, as Parquet's
    assert "restore row 4 and append the corrected row" in err


def test_a_failed_csv_row_edited_in_place_is_named_and_runs_again_as_it_is_now_with_retry_failed(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    simulator.config.script.update({"Say t2": ["400"]})
    rows = [{"id": i, "text": f"t{i}"} for i in range(5)]
    path = _table(tmp_path / "in.csv", rows)
    args = [str(path), "-q", "--template", "Say {text}"]
    assert main(args) == 1
    rows[2]["text"] = "t2, said better"  # corrected where it stands (a quoted cell now)
    _table(path, rows)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "changed at row 3, and it failed after being sent" in err and "pass --retry-failed" in err
    assert main([*args, "--retry-failed"]) == 0
    assert simulator.bodies[-1]["messages"][0]["content"] == "Say t2, said better"
    assert sorted(r["line"] for r in read_jsonl(tmp_path / "in.csv.results.jsonl")) == [1, 2, 3, 4, 5]


def test_outputs_of_another_input_are_refused_naming_it_and_what_to_do(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    records = read_jsonl(EXAMPLES / "companies.jsonl")[:5]
    write_jsonl(tmp_path / "items.jsonl", records)
    _table(tmp_path / "items.csv", records)
    write_jsonl(tmp_path / "other.jsonl", records[1:])
    assert main(["items.jsonl", "-q", "-o", "shared.jsonl", *DEMO]) == 0
    for other in ("items.csv", "other.jsonl"):
        assert main([other, "-q", "-o", "shared.jsonl", *DEMO]) == 2
        err = capsys.readouterr().err
        assert f"shared.jsonl holds the answers to another input file, {tmp_path / 'items.jsonl'}, not {other}" in err
        assert f"HINT: give {other} outputs of its own (-o {other}.results.jsonl)" in err
        assert "changed at" not in err
        assert main([other, "-q", "-o", f"{other}.results.jsonl", *DEMO]) == 0  # what the hint says
    assert len(read_jsonl(tmp_path / "shared.jsonl")) == 5


@pytest.mark.parametrize("name", ["in.csv", "in.parquet"])
def test_kill_9_at_random_moments_on_a_table_then_resume_exactly_once(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], name: str
) -> None:
    env, simulator = sim
    n = 800
    rows = [{"id": f"r{i}", "text": f"row {i}, with a comma"} for i in range(n)]
    if name.endswith(".csv"):
        _table(tmp_path / name, rows)
    else:  # row groups of 500: the reader crosses several while it runs
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name, row_group_size=200)
    rng = random.Random(11)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncbatch", name, "--no-progress", "-c", "20", "--template", "{text}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = simulator.requests + rng.randint(30, 200)
        deadline = time.monotonic() + 60
        while simulator.requests < target and proc.poll() is None:  # a condition, not a guess at timing
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL, "the run had finished: nothing was killed"
    assert main([name, "-q", "-c", "20", "--template", "{text}"]) == 0
    results = read_jsonl(tmp_path / f"{name}.results.jsonl")  # a torn line would not parse
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(n))
    assert all(r["output"] == f"Simulated answer to: row {int(r['custom_id'][1:])}, with a comma" for r in results)


def test_a_bad_row_is_an_error_line_naming_the_file_and_row_and_the_others_go_on(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    path = _table(tmp_path / "in.csv", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    assert main([str(path), "-q", "--template", "{text}"]) == 1
    (error,) = read_jsonl(tmp_path / "in.csv.results.errors.jsonl")
    assert error["error"]["message"] == f"{path}:3: duplicate custom_id 'a'"
    assert len(read_jsonl(tmp_path / "in.csv.results.jsonl")) == 2


def test_a_null_the_template_names_is_a_bad_line_never_sent_and_an_empty_csv_cell_is_empty_text(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": None}, {"id": "b", "text": "x", "note": None}])
    assert main(["in.jsonl", "-q", "--template", "Classify: {text}"]) == 1 and simulator.requests == 1
    (error,) = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert error["custom_id"] == "a" and error["error"]["code"] == "invalid_input"
    assert error["error"]["message"] == "in.jsonl:1: template field 'text' is null (empty in the table)"
    assert [r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl")] == ["b"]  # a null it does not name
    (tmp_path / "in.csv").write_text("id,text,note\na,,n\nb,y\n")  # an empty cell; a short row's missing cell
    assert main(["in.csv", "-q", "--template", "[{text}] {note}"]) == 1 and simulator.requests == 2
    (error,) = read_jsonl(tmp_path / "in.csv.results.errors.jsonl")
    assert error["error"]["message"] == "in.csv:2: template field 'note' is null (empty in the table)"
    (answer,) = read_jsonl(tmp_path / "in.csv.results.jsonl")
    assert answer["custom_id"] == "a" and answer["output"] == "Simulated answer to: [] n"


def test_a_parquet_row_recorded_as_bad_input_may_be_fixed_in_place_and_appended_rows_run(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    rows = [{"id": f"r{i}", "text": f"t{i}"} for i in range(30)]
    rows[4] = {"id": "r4", "text": None}  # a null cell the template names: bad input, never sent as "None"
    rows[7]["id"] = "r6"  # a repeated id: bad input
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    args = ["in.parquet", "-q", "--template", "Say {text}"]
    assert main(args) == 1 and simulator.requests == 28
    errors = read_jsonl(tmp_path / "in.parquet.results.errors.jsonl")
    assert sorted(e["error"]["message"] for e in errors) == [
        "in.parquet:5: template field 'text' is null (empty in the table)",
        "in.parquet:8: duplicate custom_id 'r6'",
    ]
    assert {e["error"]["code"] for e in errors} == {"invalid_input"}
    rows[4]["text"], rows[7]["id"] = "t4", "r7"  # fixed where they stand, and two rows appended
    pq.write_table(pa.Table.from_pylist([*rows, {"id": "r30", "text": "t30"}, {"id": "r31", "text": "t31"}]),
                   tmp_path / "in.parquet")  # fmt: skip
    assert main(args) == 0 and simulator.requests == 32
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.parquet.results.jsonl")) == sorted(
        f"r{i}" for i in range(32)
    )


def test_the_example_reviews_csv_its_parquet_and_its_records_file_give_the_same_results(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    with (EXAMPLES / "reviews.csv").open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    write_jsonl(tmp_path / "reviews.jsonl", records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "reviews.parquet")
    options = ["--template", "Classify: {text}", "--tools", str(EXAMPLES / "classify_sentiment.json"), "--strict"]
    for name in (str(EXAMPLES / "reviews.csv"), "reviews.parquet", "reviews.jsonl"):
        assert main([name, "-q", "-o", f"{Path(name).name}.results.jsonl", *options]) == 0
    expected = _answers(tmp_path / "reviews.jsonl.results.jsonl")
    assert [cid for cid, _, _ in expected] == [f"rev-{i:02d}" for i in range(1, 13)]
    assert _answers(tmp_path / "reviews.csv.results.jsonl") == expected
    assert _answers(tmp_path / "reviews.parquet.results.jsonl") == expected


def test_a_table_and_a_records_file_of_one_name_in_one_folder_do_not_share_outputs(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    records = read_jsonl(EXAMPLES / "companies.jsonl")[:5]
    write_jsonl(tmp_path / "items.jsonl", records)
    _table(tmp_path / "items.csv", records)
    assert main(["items.jsonl", "-q", *DEMO]) == 0
    assert main(["items.csv", "-q", *DEMO]) == 0
    assert len(read_jsonl(tmp_path / "items.results.jsonl")) == 5
    assert _answers(tmp_path / "items.csv.results.jsonl") == _answers(tmp_path / "items.results.jsonl")


def test_a_tables_total_counts_its_rows_not_its_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _table(tmp_path / "in.csv", [{"id": i, "text": f"t{i}"} for i in range(12)])
    assert count_lines(path) == 12
    (tmp_path / "empty.csv").write_text("id,text\n", encoding="utf-8")
    assert count_lines(tmp_path / "empty.csv") == 0
    assert main([str(path), "--simulate", "--sim-latency-ms", "5", "--log-format", "json", "--template", "{text}"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    totals = {e["total"] for e in events if "total" in e}
    assert totals == {12}, totals


def test_a_tables_total_counts_rows_whose_cells_hold_line_breaks_once_and_blank_rows_not_at_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A quoted cell may hold line breaks: the total is the reader's own count from the first status line on.
    A blank line is no input (row 2 here); a row of empty cells (``,,``) is one, and an error line names it."""
    path = tmp_path / "in.csv"
    rows = ['1,"Acme\nInc","a\r\nb\rc"\r\n\r\n', '2,Globex,"x\n\ny"\n,,\n', '3,"Ini\ntech",plain\n', "4,Umbrella,z"]
    path.write_bytes(("id,company,notes\r\n" + "".join(rows)).encode())
    assert count_lines(path) == 5
    assert count_lines(path) == sum(1 for _ in read_lines(path))  # the reader's own count
    argv = [str(path), "--simulate", "--sim-latency-ms", "5", "--log-format", "json", "--template", "{company}"]
    assert main(argv) == 1  # the empty row failed
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [e["total"] for e in events if e["event"] == "status"][:1] == [5]  # the first status line: 0/5, not 0/9
    assert {e["total"] for e in events if e["event"] == "status"} == {5}
    assert len(read_jsonl(tmp_path / "in.csv.results.jsonl")) == 4
    (empty,) = read_jsonl(tmp_path / "in.csv.results.errors.jsonl")
    assert empty["error"]["message"] == f"{path}:4: every cell of the row is empty" and empty["attempts"] == 0


@pytest.mark.parametrize("name", ["book.xlsx", "book.csv", "book.jsonl"])
def test_an_excel_workbook_is_named_as_one_with_what_to_save_it_as(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with zipfile.ZipFile(tmp_path / name, "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    assert main([str(tmp_path / name), "--simulate", "--template", "{text}"]) == 2
    err = capsys.readouterr().err
    assert "is an Excel workbook" in err and "save the sheet as CSV UTF-8" in err and "Traceback" not in err
    assert not list(tmp_path.glob("book*.results*"))


def test_a_table_without_a_header_row_is_told_its_first_row_names_the_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.csv").write_text("Acme,software,Zurich\nGlobex,energy,Oslo\n", encoding="utf-8")
    assert main([str(tmp_path / "in.csv"), "--simulate", "--template", "About {company}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "its one row fails" in err and "line" not in err.partition("HINT")[0].replace("in.csv", "")
    assert "the columns named in its first row are 'Acme', 'software', 'Zurich'" in err  # in file order, quoted
    assert "add a header row" in err and "a number" not in err


@pytest.mark.parametrize("first", ["Acme,2001,software", "Acme,software,-3.5", "Acme,software,1,234"])
def test_a_number_in_a_tables_first_row_is_named_as_a_sign_it_has_no_header_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str
) -> None:
    rows = [first.replace("Acme", name) for name in ("Acme", "Globex", "Initech")]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main([str(tmp_path / "in.csv"), "--simulate", "--template", "About {company}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    cells = first.split(",")
    number = next(cell for cell in cells if cell[-1].isdigit())
    assert "the first 2 rows all fail the same way, so every row would" in err
    assert f"its first row ({', '.join(map(repr, cells))}) holds {number!r}, a number" in err
    assert "not a header row" in err and "Add a header row" in err
    assert not list(tmp_path.glob("in*.results*"))
