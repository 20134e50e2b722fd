"""Counters for one run. Updated by the runner, read by the progress display.

Plain attribute increments: nothing here costs more than an add per request.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

RESERVOIR = 20_000  # latency samples kept for p50/p95, whatever the input size


@dataclass
class RunStats:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    input_errors: int = 0
    attempts: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers
    in_flight: int = 0
    estimated_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    resumed: int = 0  # inputs already recorded when this run started
    resent: int = 0  # inputs that were in flight when the last run stopped
    changed: list[str] = field(default_factory=list)  # options changed at this resume (--accept-changes)
    learned_tpm: float | None = None  # adaptive mode: the rate learned so far, in the server's tokens
    charge_ratio: float | None = None  # the server's charge per unit of the client's estimate, once learned
    charged_tokens: float = 0.0  # admitted, in the server's units (estimate x ratio): what the quota counts
    simulated: bool = False
    interrupted: bool = False
    stopped: str | None = None  # why the run stopped early, resumably (outage, quota)
    aborted: str | None = None
    notice: str | None = None  # a state the user should see now ("endpoint unreachable since ...")
    failure_reasons: Counter[str] = field(default_factory=Counter)  # error code -> inputs failed with it
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # the run's (injected) clock
    started: float = field(init=False)
    finished: float | None = None
    _latencies: list[float] = field(default_factory=list, repr=False)
    _seen: int = field(default=0, repr=False)
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def elapsed(self) -> float:
        return (self.clock() if self.finished is None else self.finished) - self.started

    @property
    def requests_per_second(self) -> float:
        """This run's inputs per second: lines already recorded when it started are not its work."""
        return (self.done - self.resumed) / self.elapsed if self.elapsed > 0 else 0.0

    def add_latency(self, ms: float) -> None:
        """Reservoir sampling keeps percentiles honest in bounded memory."""
        self._seen += 1
        if len(self._latencies) < RESERVOIR:
            self._latencies.append(ms)
        elif (slot := self._rng.randrange(self._seen)) < RESERVOIR:
            self._latencies[slot] = ms

    def latency_percentile(self, q: float) -> float | None:
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
