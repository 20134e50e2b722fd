"""The simulator's quota, enforced the way Azure does it.

* RPM is checked per 1-second window: more than RPM/60 requests in one second get a 429.
* TPM is checked over about 10 seconds: a bucket of TPM/6 tokens refilled at TPM/60 per second,
  charged with the admission estimate (prompt characters / 4 + max_tokens x n).

Pure apart from the injected clock, so it is tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: float  # seconds; 0 when allowed
    remaining_requests: int
    remaining_tokens: int


class Quota:
    def __init__(self, tpm: int | None, rpm: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.tpm, self.rpm, self.clock = tpm, rpm, clock
        self.capacity = (tpm or 0) / 6
        self.tokens = self.capacity
        self.refilled_at = clock()
        self.window = math.floor(clock())
        self.window_count = 0

    def admit(self, estimate: int) -> Verdict:
        now = self.clock()
        self._refill(now)
        if self.rpm:
            second = math.floor(now)
            if second != self.window:
                self.window, self.window_count = second, 0
            if self.window_count + 1 > self.rpm / 60:
                return self._deny(max(0.001, second + 1 - now))
        cost = min(estimate, self.capacity) if self.tpm else 0
        if self.tpm and cost > self.tokens:
            return self._deny((cost - self.tokens) / (self.tpm / 60))
        self.tokens -= cost
        self.window_count += 1
        return Verdict(True, 0.0, self._remaining_requests(), int(self.tokens))

    def _deny(self, wait: float) -> Verdict:
        return Verdict(False, wait, self._remaining_requests(), int(self.tokens))

    def _refill(self, now: float) -> None:
        if self.tpm:
            self.tokens = min(self.capacity, self.tokens + (now - self.refilled_at) * self.tpm / 60)
        self.refilled_at = now

    def _remaining_requests(self) -> int:
        return max(0, int(self.rpm / 60) - self.window_count) if self.rpm else 0
