"""asyncbatch export: input order on disk in bounded memory, the join with the input, CSV and Parquet."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pandas as pd
import pytest

from asyncbatch.cli.main import main
from asyncbatch.export import Rows, export
from asyncbatch.simulator import SimConfig

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
