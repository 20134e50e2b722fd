"""The README's demo and --help's example are one command; it runs, runs again, and its export works.

And the documentation keeps up with the code: docs/options.md is what the parsers say, and every
link between the README and docs/ leads to a file that exists."""

from __future__ import annotations

import csv
import re
import shlex
import shutil
from pathlib import Path

import pytest

from asyncbatch.cli.main import main
from asyncbatch.cli.parser import DESCRIPTION, reference

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _readme_command(start: str) -> list[str]:
    line = next(line for line in README.splitlines() if start in line)
    command = line[line.index(start) :].split(" && ")[0]
    return shlex.split(command.removeprefix(".venv/bin/"))


def _help_command(start: str) -> list[str]:
    text = DESCRIPTION.replace("\\\n", " ")
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


def test_the_options_reference_is_generated_from_the_parsers() -> None:
    written = (ROOT / "docs" / "options.md").read_text()
    assert written == reference() + "\n", "docs/options.md is stale: python -m asyncbatch.cli.parser > docs/options.md"
    for option in ("--concurrency", "--batch-api", "--max-cost", "--format", "--ordered"):
        assert f"`{option}" in written or f", {option}" in written


def test_the_readme_is_one_screenful_of_steps_and_its_links_lead_somewhere() -> None:
    assert len(README.encode()) <= 15_000
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", README)
    assert {"docs/usage.md", "docs/options.md", "docs/azure.md", "docs/design.md"} <= set(links)
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.name} links to {target}, which does not exist"


def test_the_layout_section_names_every_module_and_nothing_that_is_not_there() -> None:
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    words = set(re.findall(r"[\w.]+/|[\w.]+\.py", block))
    package = ROOT / "asyncbatch"
    for word in words:
        assert (package / word).exists() or (ROOT / word).exists(), f"the layout names {word}, which is not there"
    for path in package.iterdir():
        if path.suffix == ".py" or (path.is_dir() and path.name != "__pycache__"):
            assert path.name + ("/" if path.is_dir() else "") in words, f"asyncbatch/{path.name} is not in the layout"
    for module in package.glob("*/*.py"):
        if module.stem != "__init__":
            assert re.search(rf"\b{module.stem}\b", block), f"{module.parent.name}/{module.name} is not in the layout"


def _demos() -> list[list[str]]:
    """Every demo command in the README and docs/: the lines that run asyncbatch on examples/ with --simulate."""
    texts = [README, *(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))]
    found = []
    for line in (line for text in texts for line in text.splitlines()):
        if "asyncbatch examples/" in line and "--simulate" in line:
            command = line[line.index("asyncbatch examples/") :].split("   #")[0].split(" && ")[0]
            found.append(shlex.split(command)[1:])
    return found


@pytest.mark.parametrize("demo", _demos(), ids=lambda d: " ".join(d)[:60])
def test_every_demo_shows_a_cost_or_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo: list[str]
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    assert main([*demo, "--no-progress", "--sim-latency-ms", "0"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"│ cost +│ (\d+\.\d+ USD this run|no cost: '[^']+' is not in the)", err), err
