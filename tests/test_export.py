"""asyncbatch export: input order on disk in bounded memory, the join with the input, CSV and Parquet."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.export import Rows, export
from asyncbatch.simulator import SimConfig
from asyncbatch.store.files import atomic_file

from .helpers import simulator_env, write_jsonl


def _outputs(tmp_path: Path, n: int, failed: set[int]) -> tuple[Path, Path]:
    """A results and an errors file in a shuffled (completion) order, as a run writes them."""
    order = list(range(1, n + 1))
    random.Random(7).shuffle(order)
    results, errors = [], []
    for line in order:
        if line in failed:
            errors.append({"custom_id": str(line - 1), "error": {"code": "server_error", "message": "m"}, "line": line})
        else:
            body = {"usage": {"prompt_tokens": line, "completion_tokens": 2}}
            output = {"n": line, "tag": "x"}
            results.append({"custom_id": str(line - 1), "response": {"body": body}, "output": output, "line": line})
    return (
        write_jsonl(tmp_path / "in.results.jsonl", results),
        write_jsonl(tmp_path / "in.results.errors.jsonl", errors),
    )


def test_ordered_export_sorts_on_disk_in_chunks_and_marks_failures(tmp_path: Path) -> None:
    results, errors = _outputs(tmp_path, 3000, failed={5, 999, 3000})
    rows = Rows(results, errors, None, ordered=True, chunk_bytes=20_000)  # about 100 lines a chunk: 30 spills
    out = io.BytesIO()
    report = export(rows, "jsonl", None, out)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["line"] for r in exported] == list(range(1, 3001))
    assert [r["line"] for r in exported if r["status"] == "failed"] == [5, 999, 3000]
    assert exported[0]["output"] == {"n": 1, "tag": "x"} and exported[0]["prompt_tokens"] == 1
    assert exported[4]["error_code"] == "server_error"
    assert (report.rows, report.succeeded, report.failed) == (3000, 2997, 3)


def test_join_keeps_the_input_fields_and_an_integer_id_keeps_its_type(tmp_path: Path) -> None:
    results, errors = _outputs(tmp_path, 50, failed={7})
    records = [{"id": i, "company": f"Co{i}", "output": "an input field named like a result field"} for i in range(60)]
    write_jsonl(tmp_path / "in.jsonl", records)
    out = io.BytesIO()
    report = export(Rows(results, errors, tmp_path / "in.jsonl", ordered=False), "jsonl", None, out)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in exported] == list(range(50))  # integers, in input order
    assert exported[3]["company"] == "Co3" and exported[3]["input_output"].startswith("an input field")
    assert exported[3]["output"] == {"n": 4, "tag": "x"}
    assert report.missing == 10  # the last 10 inputs have no result yet


def test_csv_and_parquet_open_in_pandas_with_one_row_per_input(tmp_path: Path) -> None:
    results, _ = _outputs(tmp_path, 200, failed={10, 20})
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}"} for i in range(200)])
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"table.{fmt}"
        assert main(["export", str(results), "--input", "in.jsonl", "-o", str(path)]) == 0
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert len(frame) == 200 and list(frame["line"]) == list(range(1, 201))
        assert list(frame["id"]) == list(range(200)) and str(frame["id"].dtype) == "int64"
        assert frame.loc[5, "output.n"] == 6 and frame.loc[9, "status"] == "failed"
        assert {"company", "output.tag", "error_code", "prompt_tokens"} <= set(frame.columns)


def test_export_of_a_real_run_with_structured_output_and_bad_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[object] = [{"id": i, "company": f"Co{i}", "notes": "n"} for i in range(120)]
    rows[40] = "{not json"
    write_jsonl(tmp_path / "in.jsonl", rows)
    tools = Path(__file__).parents[1] / "examples" / "get_company_info.json"
    with simulator_env(SimConfig(latency=0.0), monkeypatch):
        code = main(["in.jsonl", "--template", "About {company}", "--tools", str(tools), "-q"])
    assert code == 1  # the bad line
    assert main(["export", "in.results.jsonl", "--input", "in.jsonl", "-o", "t.parquet"]) == 0
    assert "exported 120 rows to t.parquet (119 succeeded, 1 failed)" in capsys.readouterr().err
    frame = pd.read_parquet(tmp_path / "t.parquet")
    assert list(frame["line"]) == list(range(1, 121))
    assert frame.loc[40, "error_code"] == "invalid_input"
    produced = [c for c in frame.columns if c.startswith("output.")]
    assert produced and frame.loc[0, produced].notna().any()
    assert main(["export", "in.results.jsonl", "--ordered"]) == 0
    lines = [json.loads(line)["line"] for line in capsys.readouterr().out.splitlines()]
    assert lines == list(range(1, 121))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_columns_come_in_the_documented_order_with_no_column_every_row_leaves_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    rows: list[object] = [{"id": i, "company": f"Co{i}", "notes": "n"} for i in range(6)]
    rows[0] = "{not json"  # the first row a failure: its output is empty, and it comes first
    write_jsonl(tmp_path / "in.jsonl", rows)
    tools = Path(__file__).parents[1] / "examples" / "get_company_info.json"
    with simulator_env(SimConfig(latency=0.0), monkeypatch):
        assert main(["in.jsonl", "--template", "About {company}", "--tools", str(tools), "-q"]) == 1
    assert main(["export", "in.results.jsonl", "--input", "in.jsonl", "-o", f"t.{fmt}"]) == 0
    frame = pd.read_csv(tmp_path / "t.csv") if fmt == "csv" else pd.read_parquet(tmp_path / "t.parquet")
    columns = list(frame.columns)
    spread = [c for c in columns if c.startswith("output.")]
    assert spread and "output" not in columns  # every answer was spread: no all-empty output column
    documented = ["line", "status", "custom_id", "id", "company", "notes", *spread]
    documented += ["error_code", "error_message", "attempts", "prompt_tokens", "completion_tokens"]
    assert columns == documented  # docs/usage.md's order
    assert not [c for c in columns if frame[c].isna().all()]


def test_a_plain_output_keeps_its_column_in_place(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", [{"custom_id": "a", "output": "hi", "line": 2}])
    errors = write_jsonl(tmp_path / "e.jsonl", [{"custom_id": "b", "error": {"code": "x", "message": "m"}, "line": 1}])
    out = io.BytesIO()
    export(Rows(results, errors, None, ordered=True), "csv", None, out)
    header, first, second = out.getvalue().decode().splitlines()
    tail = ["error_code", "error_message", "attempts", "prompt_tokens", "completion_tokens"]
    assert header.split(",") == ["line", "status", "custom_id", "output", *tail]
    assert first.startswith("1,failed,b,,x,m") and second.startswith("2,succeeded,a,hi,")


def test_export_refuses_parquet_to_a_terminal_and_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, _ = _outputs(tmp_path, 3, failed=set())
    assert main(["export", str(results), "--format", "parquet"]) == 2
    assert "needs -o PATH" in capsys.readouterr().err
    assert main(["export", "nope.jsonl"]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err
    before = results.read_bytes()
    assert main(["export", str(results), "-o", str(results)]) == 2
    assert "would overwrite a file export reads" in capsys.readouterr().err
    assert results.read_bytes() == before


# -- no temporary file outlives its process -------------------------------------------------------


def _big_results(tmp_path: Path, n: int) -> Path:
    body = {"usage": {"prompt_tokens": 10, "completion_tokens": 2}}
    line = '{"custom_id":"%d","response":{"body":%s},"output":{"n":%d,"text":"%s"},"line":%d}\n'
    text = "lorem ipsum " * 20
    with (tmp_path / "in.results.jsonl").open("w") as f:
        f.writelines(line % (i, json.dumps(body), i, text, i + 1) for i in range(n))
    return tmp_path / "in.results.jsonl"


def _writing_into(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` has a file open in ``directory`` (its output, named or not yet)."""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{directory}/"):
                    return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_an_export_killed_midway_leaves_no_temporary_file(tmp_path: Path, sig: signal.Signals) -> None:
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    scratch.mkdir()
    results = _big_results(tmp_path, 60_000)
    env = {**os.environ, "TMPDIR": str(scratch)}
    command = [sys.executable, "-m", "asyncbatch", "export", str(results), "--ordered", "-o", str(out / "x.csv")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _writing_into(proc.pid, out):  # polled: the export has begun to write its output
            assert proc.poll() is None and time.monotonic() < deadline, "the export never began writing"
            time.sleep(0.002)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130)  # killed midway, not finished
    assert list(out.iterdir()) == [] and list(scratch.iterdir()) == []  # nothing left, named or in TMPDIR
    assert main(["export", str(results), "--ordered", "-o", str(out / "x.csv")]) == 0
    assert [p.name for p in out.iterdir()] == ["x.csv"]


def test_a_temporary_file_has_no_name_until_it_is_complete(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    with atomic_file(target) as f:
        f.write(b"new")
        assert [p.name for p in tmp_path.iterdir()] == ["file"]  # a reader sees only the old file, and no other
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_temporary_files_left_by_dead_processes_are_swept_and_those_of_live_ones_kept(tmp_path: Path) -> None:
    results, _ = _outputs(tmp_path, 5, failed=set())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f".x.csv.{gone.pid}.tmp"  # an export on a file system without unnamed files, killed
    live = tmp_path / ".x.csv.1.tmp"  # one another live process (pid 1 always is) may still be writing
    other = tmp_path / ".x.csv.notes.tmp"  # not a name export makes
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    assert main(["export", str(results), "-o", str(tmp_path / "x.csv")]) == 0
    assert not dead.exists() and live.exists() and other.exists()


def test_a_killed_runs_unfinished_replace_is_removed_by_the_next_run_and_a_users_file_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": f"r{i}", "prompt": f"p{i}"} for i in range(3)])
    state = tmp_path / "in.results.jsonl.state"
    state.mkdir()
    stale = [state / "checkpoint.tmp", tmp_path / "in.results.errors.jsonl.tmp"]
    stale[0].write_bytes(b'{"version":3,"fing')
    stale[1].write_bytes(b'{"id":"batch_req_1","custom_id":"r0","li')
    users = tmp_path / "in.results.jsonl.tmp"  # not a name a run replaces through: the user's own
    users.write_bytes(b"my notes")
    with simulator_env(SimConfig(), monkeypatch):
        assert main(["in.jsonl", "-q", "--template", "{prompt}"]) == 0
    assert not any(p.exists() for p in stale) and users.read_bytes() == b"my notes"


def test_an_input_column_named_like_a_spread_output_column_keeps_its_own_values(tmp_path: Path) -> None:
    """An exported table run again carries its old answers in ``output.label``: they stay the input's, and a
    failed row's old label never shows as its answer."""
    results = write_jsonl(tmp_path / "r.jsonl", [{"custom_id": "a", "output": {"label": "positive"}, "line": 1}])
    failure = {"custom_id": "b", "error": {"code": "content_filter", "message": "m"}, "line": 2}
    errors = write_jsonl(tmp_path / "e.jsonl", [failure])
    inputs = [
        {"id": "a", "output.label": "negative", "input_output.label": "older", "output": "x"},
        {"id": "b", "output.label": "negative", "input_output.label": "older", "output": "y"},
    ]
    write_jsonl(tmp_path / "in.jsonl", inputs)
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"t.{fmt}"
        export(Rows(results, errors, tmp_path / "in.jsonl", ordered=True), fmt, path, io.BytesIO())
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert list(frame["output.label"].fillna("")) == ["positive", ""]  # the failed row has no answer
        assert list(frame["input_output.label"]) == ["negative", "negative"]
        assert list(frame["input_input_output.label"]) == ["older", "older"]
        assert list(frame["input_output"]) == ["x", "y"]


json_cells = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63) - 1, 2**64 - 1)  # what orjson reads as integers, and one past int64 below
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None)
@given(outputs=st.lists(json_cells, min_size=1, max_size=4))
@example(outputs=[{"n": 2**63}, {"n": 1}])  # an integer past Parquet's int64 crashed the writer
@example(outputs=[[2**64 - 1, 1]])  # so did a list of numbers holding one
@example(outputs=[2**53 + 1, 0.5])  # a float column would round it
@example(outputs=[[2**53 + 1]])  # and so would a list of floats
@example(outputs=[-(2**63) - 1])  # orjson reads it as a float: a float column
def test_any_outputs_across_rows_export_to_parquet_with_every_value_kept_exactly(
    tmp_path_factory: pytest.TempPathFactory, outputs: list[Any]
) -> None:
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("any")
    results = [{"custom_id": str(i), "output": output, "line": i + 1} for i, output in enumerate(outputs)]
    path = write_jsonl(folder / "r.jsonl", results)
    export(Rows(path, None, None, ordered=True), "csv", folder / "t.csv", io.BytesIO())
    assert len(pd.read_csv(folder / "t.csv")) == len(outputs)
    export(Rows(path, None, None, ordered=True), "parquet", folder / "t.parquet", io.BytesIO())
    table = pq.read_table(folder / "t.parquet").to_pylist()
    for row, line in zip(table, path.read_text().splitlines(), strict=True):
        output = orjson.loads(line)["output"]  # as asyncbatch reads the results file
        for key, value in (output if isinstance(output, dict) else {None: output}).items():
            cell = row["output" if key is None else f"output.{key}"]
            if isinstance(cell, str) and not isinstance(value, str):
                cell = json.loads(cell)
            assert cell == value and (type(cell) is type(value) or isinstance(value, int | list))
