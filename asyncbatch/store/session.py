"""One run's files, opened for it and written through it.

``opened`` does everything before the first byte is written: every path checked,
the outputs locked for this process, moved aside on ``restart``, the resume state
recovered. ``Store`` is what the run then writes through: the two writers (each
file's only writer), the outcome recorder, the ids log, the sent-journal and the
checkpoint, saved right after a writer's batch (at most once a second, by the run's
clock) so it always agrees with the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ..clock import Clock
from ..config import Outputs
from ..errors import RETRY_FAILED, OutputError
from ..redact import Redactor
from ..stats import RunStats
from .cache import check_cache
from .checkpoint import Lines, ResumeState, SentJournal, drop_errors, recover, save_checkpoint
from .files import check_paths, move_aside, prepare_state
from .ids import IdLog
from .lock import OutputLock
from .recorder import Recorder
from .writer import JsonlWriter

CHECKPOINT_EVERY = 1.0  # seconds


class Notes(Protocol):
    def warn(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...


@contextmanager
def locked(outputs: Outputs) -> Iterator[OutputLock]:
    """Check every path (the response cache's too), then hold the outputs for this process.

    :raises AlreadyRunning: another run writes them, by any name (a ConfigError).
    """
    check_paths(outputs)
    if outputs.cache is not None:
        check_cache(outputs.cache, outputs.cache_mode)
    with OutputLock(outputs.files, outputs.state.lock) as lock:
        yield lock


def restart(outputs: Outputs) -> list[tuple[Path, Path]]:
    """Move the outputs and the state directory aside (never deleted); return (old, new) names."""
    with locked(outputs) as lock:
        return _move_aside(outputs, lock)


def _move_aside(outputs: Outputs, lock: OutputLock) -> list[tuple[Path, Path]]:
    """Under the lock: rename the outputs and the state directory (Batch API jobs kept in it), then lock anew."""
    custom = [outputs.checkpoint] if outputs.checkpoint is not None else []
    moved = move_aside([*outputs.files, outputs.state.dir, *custom])
    lock.release()
    lock.acquire()  # the new, empty outputs; a run that started in between holds them, and this one stops
    return moved


@contextmanager
def opened(
    outputs: Outputs,
    input_path: Path,
    expected: Mapping[str, str],
    notes: Notes,
    *,
    restart: bool = False,
    accept_changes: bool = False,
    retry_failed: bool = False,
    lines: Lines | None = None,
    rows: Lines | None = None,
) -> Iterator[ResumeState]:
    """The outputs, locked for the block, and what is already recorded in them.

    :param expected: the request options a resume must keep (``checkpoint.fingerprint``).
    :param restart: first move the old outputs aside. ``retry_failed``: drop every failure recorded.
    :param lines: the input's lines as the reader reads them, when they are not its bytes (Parquet).
    :param rows: a table's rows as the reader makes them, to name a row edited in place (CSV, TSV).
    :raises ConfigError: the outputs belong to another input or other options, or another run holds them.
    """
    with locked(outputs) as lock:
        if restart:
            for old, new in _move_aside(outputs, lock):
                notes.warn(f"restart: moved {old} to {new}")
        prepare_state(outputs)
        state = recover(
            input_path,
            outputs,
            expected,
            accept_changes=accept_changes,
            retry_failed=retry_failed,
            input_lines=lines,
            input_rows=rows,
        )
        # --retry-failed drops every failure; bad input lines are looked at again too
        if retry_failed and (dropped := drop_errors(outputs.errors, outputs.state.checkpoint, state, lambda _: True)):
            state.notes.append(f"{RETRY_FAILED}: {dropped} failed inputs will run again")
        for note in state.notes:
            notes.info(note)
        yield state


class Store:
    """What a run writes through, once ``opened`` has recovered ``state``.

    ``run`` drives the writers until ``close``; ``finish`` saves the final, exact checkpoint and closes
    the side files.

    :param clock: monotonic seconds, injected: when the checkpoint and the outputs' fsyncs are due.
    """

    def __init__(
        self,
        outputs: Outputs,
        state: ResumeState,
        expected: Mapping[str, str],
        stats: RunStats,
        redactor: Redactor,
        clock: Clock = time.monotonic,
    ) -> None:
        self.outputs, self.state, self.expected, self.clock = outputs, state, dict(expected), clock
        fsync = outputs.fsync_interval
        self.journal = SentJournal(outputs.state.sent)
        self.results = JsonlWriter(
            outputs.results, self._on_results, fsync_interval=fsync, redactor=redactor, clock=clock
        )
        self.errors = JsonlWriter(outputs.errors, self._on_errors, fsync_interval=fsync, redactor=redactor, clock=clock)
        self.recorder = Recorder(self.results, self.errors, stats)
        self.ids = IdLog(outputs.state.ids, known=state.ids_lines, offset=state.input_offset, prefix=state.prefix)
        self._identity = outputs.identity()
        self._saved_at = clock()

    def _on_results(self, lines: list[int], size: int) -> None:
        self.state.on_results(lines, size)
        self.journal.recorded(lines)
        self._now_and_then()

    def _on_errors(self, lines: list[int], size: int) -> None:
        self.state.on_errors(lines, size)
        self.journal.recorded(lines)
        self._now_and_then()

    def _now_and_then(self) -> None:
        """Just after a batch reached its file, so the state agrees with both: the checkpoint, once a second."""
        if (now := self.clock()) - self._saved_at >= CHECKPOINT_EVERY:
            self._saved_at = now
            self.save()

    def sent(self, line_no: int) -> None:
        """A request for ``line_no`` is about to leave: journalled until its line is written."""
        self.journal.sent(line_no)

    async def run(self) -> None:
        """The writers, until both are closed."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.results.run())
            tg.create_task(self.errors.run())

    async def written(self) -> None:
        """Until everything put so far is in the files."""
        await self.results.written()
        await self.errors.written()

    def close(self) -> None:
        """No more lines: the writers finish what they hold, and ``run`` returns."""
        self.results.close()
        self.errors.close()

    def finish(self) -> None:
        """After ``run``: the final checkpoint (the files are complete now), and the side files closed."""
        try:
            self.save()
        finally:
            self.ids.close()
            self.journal.close()

    def save(self) -> None:
        """Snapshot the resume state between writer batches: always consistent with the files.

        If it cannot be written (disk full), the previous checkpoint stays: the outputs
        only grow, so it is still true, and resuming reads whatever came after it.
        """
        with contextlib.suppress(OSError, OutputError):
            snapshot = self.state.snapshot(self.expected, self.ids.flush(), self._identity)
            save_checkpoint(self.outputs.state.checkpoint, snapshot)
            self.journal.reset()
