"""The README's demo and --help's example are one command; it runs, runs again, and its export works."""

from __future__ import annotations

import csv
import shlex
import shutil
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.cli.parser import EPILOG

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _readme_command(start: str) -> list[str]:
    line = next(line for line in README.splitlines() if start in line)
    command = line[line.index(start) :].split(" && ")[0]
    return shlex.split(command.removeprefix(".venv/bin/"))


def _help_command(start: str) -> list[str]:
    text = EPILOG.replace("\\\n", " ")
    line = next(line.strip() for line in text.splitlines() if line.strip().startswith(start))
    return shlex.split(line)


def test_the_readme_demo_is_the_help_example_and_it_runs_twice_then_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = _readme_command(".venv/bin/asyncbatch examples/companies.jsonl")
    assert demo == _help_command("asyncbatch examples/companies.jsonl")
    exporting = _readme_command(".venv/bin/asyncbatch export")
    assert exporting == _help_command("asyncbatch export examples/")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    assert main(demo[1:]) == 0
    first = capsys.readouterr().err
    assert "SIMULATED" in first and "cost" in first
    assert main(demo[1:]) == 0  # again: everything is done, so it resumes and sends nothing
    again = capsys.readouterr().err
    assert "24 inputs were already recorded" in again
    assert main(exporting[1:]) == 0
    with (tmp_path / "companies.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["line"]) for r in rows] == list(range(1, 25))
    assert all(r["status"] == "succeeded" and r["company"] for r in rows)
