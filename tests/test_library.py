"""The library API: what a Python caller gets, and the Python examples of docs/python.md run as written."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

import asyncbatch
from asyncbatch.cli.parser import build_parser
from asyncbatch.simulator import SimConfig, serve_in_thread
from tests.helpers import FakeClock, batch_line, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DOC = (ROOT / "docs" / "python.md").read_text()
NOT_QUALIFYING = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PYTHON_DOC, re.S)


def test_all_names_what_is_exported_and_nothing_else() -> None:
    for name in asyncbatch.__all__:  # each resolves (they are imported when first used)
        getattr(asyncbatch, name)
    with pytest.raises(AttributeError):
        asyncbatch.no_such_name  # noqa: B018
    public = {name for name in vars(asyncbatch) if not name.startswith("_")} - {
        "annotations", "importlib", "TYPE_CHECKING", "Any"
    }  # fmt: skip
    modules = {name for name in public if type(getattr(asyncbatch, name)).__name__ == "module"}
    assert sorted(asyncbatch.__all__) == asyncbatch.__all__
    assert set(asyncbatch.__all__) == (public - modules) | {"__version__"}
    for name in ("run", "RunConfig", "Interrupt", "ConfigError", "FatalAPIError", "OutputError", "AlreadyRunning"):
        assert name in asyncbatch.__all__


def test_runconfig_takes_str_paths_and_the_cli_defaults(tmp_path: Path) -> None:
    endpoint = asyncbatch.Endpoint(kind="azure", base_url="http://127.0.0.1:9", api_key="k", deployment="d")
    config = asyncbatch.RunConfig(input_path=str(tmp_path / "x.jsonl"), endpoint=endpoint)
    assert config.output_path == tmp_path / "x.results.jsonl"
    assert config.errors_path == tmp_path / "x.results.errors.jsonl"
    assert config.state.checkpoint == tmp_path / "x.results.jsonl.state" / "checkpoint"
    cli = build_parser().parse_args(["x.jsonl"])
    assert (cli.concurrency, cli.max_attempts, cli.timeout, cli.grace, cli.fsync) == (
        config.limits.concurrency,
        config.retry.max_attempts,
        config.transport.timeout,
        config.grace,
        config.fsync,
    )


def test_strict_with_a_schema_that_does_not_qualify_raises_before_any_request(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    with serve_in_thread(SimConfig(api_key="k")) as (url, sim):
        endpoint = asyncbatch.Endpoint(kind="azure", base_url=url, api_key="k", deployment="d")
        with pytest.raises(asyncbatch.ConfigError, match=r"additionalProperties"):
            config = asyncbatch.RunConfig(
                input_path=tmp_path / "in.jsonl",
                endpoint=endpoint,
                request=asyncbatch.RequestDefaults(tools=NOT_QUALIFYING, strict=True),
            )
            asyncbatch.run_sync(config)
        assert sim.requests == 0
    assert not (tmp_path / "in.results.jsonl").exists()


def test_run_is_awaited_inside_a_running_loop_with_its_clock_injected(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(5)])
    clock = FakeClock(1000.0, step=10.0)  # a clock never read twice alike

    async def main() -> asyncbatch.RunStats:
        async with asyncbatch.simulated() as endpoint:
            config = asyncbatch.RunConfig(input_path=tmp_path / "in.jsonl", endpoint=endpoint)
            return await asyncbatch.run(config, clock=clock)

    stats = asyncio.run(main())
    assert stats.succeeded == 5 and len(read_jsonl(tmp_path / "in.results.jsonl")) == 5
    assert stats.elapsed > 0 and stats.started >= 1000  # both ends of the run come from the same clock


def test_the_readme_script_runs_as_a_script(tmp_path: Path) -> None:
    (script,) = _python_blocks()[:1]
    (tmp_path / "demo.py").write_text(script)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    done = subprocess.run([sys.executable, "demo.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 succeeded, 0 failed" in done.stdout
    rows = read_jsonl(tmp_path / "demo.results.jsonl")
    assert sorted(r["output"]["name"] for r in rows) == ["name: Tell me about Contoso", "name: Tell me about Fabrikam"]


def test_the_readme_notebook_cell_runs_inside_a_running_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = _python_blocks()[1]
    code = compile(cell, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def notebook() -> None:  # like Jupyter: the loop is already running when the cell is run
        result = eval(code, {})
        if asyncio.iscoroutine(result):
            await result

    asyncio.run(notebook())
    assert "1 succeeded" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "cell.results.jsonl")) == 1


def test_the_simulator_does_not_import_the_clients_policy() -> None:
    """A witness, not a mirror: the simulator's charge and windows are its own."""
    allowed = {"asyncbatch.config"}  # the Endpoint type that simulated() yields
    for path in (ROOT / "asyncbatch" / "simulator").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert f"asyncbatch.{node.module}" in allowed, f"{path.name} imports asyncbatch.{node.module}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("asyncbatch"):
                assert (node.module or "").startswith("asyncbatch.simulator"), path.name
