"""What the Ray and Spark tests share: rows, the expected table, and a worker killed at a quiet instant."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

import asyncbatch
from asyncbatch.export import TAIL, flat
from asyncbatch.simulator import Simulator

TEMPLATE = "Classify: {text}"


class Sentiment(BaseModel):
    """The review's sentiment."""

    label: str
    score: float


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i:03d}", "text": f"review {i}", "stars": i % 5} for i in range(n)]


def endpoint(url: str, key: str = "sim-key") -> asyncbatch.Endpoint:
    return asyncbatch.Endpoint(kind="azure", base_url=url, api_key=key, deployment="dep", simulated=True)


def expected(given: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """What ``asyncbatch.map`` gives for the same rows, as its DataFrame has them, without ``parsed``.

    Its DataFrame's columns are every row's: a failed row has no ``output.<key>`` (None there), and adds an
    ``output`` column that is None everywhere, which a declared schema leaves out.
    """
    out = asyncbatch.map_sync(given, template=TEMPLATE, tools=Sentiment, endpoint=endpoint(url))
    spread = [f"output.{key}" for key in Sentiment.model_fields]
    table = []
    for row in out:
        cells = flat(row)
        kept = {k: v for k, v in cells.items() if k not in ("parsed", "output", *spread)}
        front = {k: v for k, v in kept.items() if k not in TAIL}
        table.append(front | {name: cells.get(name) for name in spread} | {k: kept[k] for k in TAIL if k in kept})
    return table


NULL_ROW = 9  # a row of ``with_null``'s whose text is null: a bad row, never sent


def with_null(given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row | {"text": None} if n == NULL_ROW else row for n, row in enumerate(given)]


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A result row without what depends on how the rows were split: ``line`` (a row's number in its batch)
    and that number in a bad row's message (``row 4: ...``)."""
    message = row.get("error_message")
    if isinstance(message, str) and message.startswith("row "):
        message = message.partition(": ")[2]
    return row | {"line": 0, "error_message": message}


def json_reporter() -> tuple[asyncbatch.JsonReporter, Callable[[], dict[str, Any]]]:
    """A reporter whose summary the test can read back."""
    stream = io.StringIO()

    def summary() -> dict[str, Any]:
        events = [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
        return next(e for e in events if e["event"] == "summary")

    return asyncbatch.JsonReporter(stream), summary


def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for ``condition``, looking every 10 ms (a condition across processes has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.01)


def recorded(state_dir: Path) -> set[str]:
    """The ids of the rows whose answers are recorded under ``state_dir`` (a torn last line is not one)."""
    found = set()
    for path in state_dir.glob("parts/*/rows.results.jsonl"):
        for line in path.read_bytes().splitlines():
            try:
                found.add(orjson.loads(line)["custom_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
    return found


def answered(sim: Simulator) -> set[str]:
    """The ids of the rows the simulator answered ("Classify: review 7" is row r007)."""
    return {f"r{int(text.rsplit(' ', 1)[1]):03d}" for text in sim.answered}


class Killer:
    """Kills (SIGKILL) a worker mid-job, during the simulator's outage, once every answer it paid is recorded.

    A request in flight at a kill is answered by the server and never read: no client can avoid paying for it
    again (Azure has no idempotency key). The outage makes an instant with none: requests sent meanwhile are
    dropped unanswered, and those answered before are written before the kill.
    """

    def __init__(self, sim: Simulator, state_dir: Path) -> None:
        self.sim, self.state_dir = sim, state_dir
        self.killed: int | None = None  # the pid
        self.recorded_at_kill: set[str] = set()
        self.thread = threading.Thread(target=self.kill, daemon=True)
        self.thread.start()

    def worker(self) -> int | None:
        """A worker in the middle of a batch, once the job has answers recorded."""
        if not recorded(self.state_dir):
            return None
        for path in self.state_dir.glob("jobs/*/stats/*.json"):
            snapshot = orjson.loads(path.read_bytes())
            if not snapshot["final"]:
                return int(snapshot["pid"])
        return None

    def in_outage(self) -> bool:
        """Whether the simulator's (first) outage is on now, by its own clock and settings."""
        (start, span), first = self.sim.config.outages[0], self.sim.first_request_at
        return first is not None and start <= time.monotonic() - first < start + span

    def quiet(self) -> bool:
        sim = self.sim
        return self.in_outage() and sim.active == 0 and answered(sim) <= recorded(self.state_dir)

    def kill(self) -> None:
        until(lambda: self.quiet() and self.worker() is not None)
        pid = self.worker()
        assert pid is not None
        self.recorded_at_kill = recorded(self.state_dir)
        os.kill(pid, signal.SIGKILL)
        if self.in_outage():  # else this machine was too slow for the outage: say so, not "billed twice"
            self.killed = pid

    def join(self) -> int:
        self.thread.join()
        assert self.killed is not None, "no worker was killed while the outage was on"
        return self.killed
