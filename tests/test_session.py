"""The store's session on its own: outputs opened (checked, locked, recovered) and written through, fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from asyncbatch.config import Outputs
from asyncbatch.records import error_record, result_record
from asyncbatch.redact import Redactor
from asyncbatch.stats import RunStats
from asyncbatch.store.checkpoint import load_checkpoint
from asyncbatch.store.lock import AlreadyRunning
from asyncbatch.store.session import CHECKPOINT_EVERY, Store, opened, restart
from tests.helpers import FakeClock, read_jsonl, write_jsonl

EXPECTED = {"deployment": "d0", "template": "t0"}  # a fingerprint, as RunConfig.fingerprint makes them


class Notes:
    def __init__(self) -> None:
        self.said: list[str] = []

    def warn(self, message: str) -> None:
        self.said.append(message)

    def info(self, message: str) -> None:
        self.said.append(message)


def outputs(tmp_path: Path) -> Outputs:
    return Outputs(results=tmp_path / "in.results.jsonl", errors=tmp_path / "in.results.errors.jsonl")


def _inputs(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"custom_id": f"r{i}", "messages": []} for i in range(n)])


def _success(n: int) -> dict[str, object]:
    return result_record(
        custom_id=f"r{n}", line_no=n, request_id=f"q{n}", raw_body=b"{}", output="ok", attempts=1, latency_ms=1.0
    )


def test_outputs_are_locked_for_the_run_and_a_second_run_on_them_is_refused(tmp_path: Path) -> None:
    path, files = _inputs(tmp_path, 3), outputs(tmp_path)
    with opened(files, path, EXPECTED, Notes()) as state:
        assert len(state.done) == 0 and files.state.dir.is_dir()
        with pytest.raises(AlreadyRunning), opened(files, path, EXPECTED, Notes()):
            pass  # pragma: no cover
    with opened(files, path, EXPECTED, Notes()):  # released with the block
        pass


def test_what_is_written_through_the_store_is_recovered_by_the_next_run_and_restart_moves_it_aside(
    tmp_path: Path,
) -> None:
    path, files, clock = _inputs(tmp_path, 3), outputs(tmp_path), FakeClock()
    with opened(files, path, EXPECTED, Notes()) as state:
        store = Store(files, state, EXPECTED, RunStats(), Redactor(()), clock=clock)

        async def write() -> None:
            running = asyncio.ensure_future(store.run())
            store.recorder.success(1, _success(1))
            store.recorder.failure(2, error_record(custom_id="r2", line_no=2, code="x", message="no", attempts=1), "x")
            await store.written()
            store.close()
            await running

        asyncio.run(write())
        store.finish()
    assert [r["custom_id"] for r in read_jsonl(files.results)] == ["r1"]
    assert [r["custom_id"] for r in read_jsonl(files.errors)] == ["r2"]
    saved = load_checkpoint(files.state.checkpoint)
    assert (saved.results_lines, saved.errors_lines, len(saved.done)) == (1, 1, 2)
    with opened(files, path, EXPECTED, Notes()) as state:
        assert [n in state.done for n in (1, 2, 3)] == [True, True, False]
    moved = restart(files)
    assert {old.name for old, _ in moved} >= {files.results.name, files.errors.name, files.state.dir.name}
    assert files.results.read_bytes() == b"" and all(new.exists() for _, new in moved)  # new, empty ones


def test_the_checkpoint_is_saved_just_after_a_batch_once_a_second_by_the_run_s_clock(tmp_path: Path) -> None:
    path, files, clock = _inputs(tmp_path, 5), outputs(tmp_path), FakeClock()
    with opened(files, path, EXPECTED, Notes()) as state:
        store = Store(files, state, EXPECTED, RunStats(), Redactor(()), clock=clock)

        async def write() -> list[int]:
            running = asyncio.ensure_future(store.run())
            lines = []
            for n in range(1, 5):
                store.recorder.success(n, _success(n))
                await store.written()
                checkpoint = files.state.checkpoint
                lines.append(load_checkpoint(checkpoint).results_lines if checkpoint.exists() else 0)
                clock.now += CHECKPOINT_EVERY / 2
            store.close()
            await running
            return lines

        assert asyncio.run(write()) == [0, 0, 3, 3]  # the third batch comes a second after the store opened
        store.finish()
    assert load_checkpoint(files.state.checkpoint).results_lines == 4  # and the last, exact one at the end
