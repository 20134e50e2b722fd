"""The simulator's quota: its own model of how a server counts, written from Azure's documentation.

Nothing here comes from the client. Two window shapes:

* ``azure``: RPM checked per 1-second slice (more than RPM/60 requests in one
  second get a 429; below 60 RPM the slice widens so that one request fits), and
  TPM over about 10 seconds: a bucket of TPM/6 refilled at TPM/60 per second.
  429s carry ``retry-after``; answers carry ``x-ratelimit-remaining-*``.
* ``minute``: fixed windows that reset on the wall-clock minute, as some
  OpenAI-compatible gateways do. Refused requests still count against RPM,
  and the 429 says nothing: no ``retry-after``, no rate-limit headers.

Pure apart from the injected clock, so it is tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Shape = Literal["azure", "minute"]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: float | None  # seconds; None when the server does not say
    remaining_requests: int | None  # None: no header is sent
    remaining_tokens: int | None


class Quota:
    """:param window: the fixed window's length in seconds (``minute`` shape; 60 on real gateways)."""

    def __init__(
        self,
        tpm: int | None,
        rpm: int | None,
        clock: Callable[[], float] = time.time,
        *,
        shape: Shape = "azure",
        window: float = 60.0,
    ) -> None:
        self.tpm, self.rpm, self.clock, self.shape, self.window = tpm, rpm, clock, shape, window
        self.capacity = (tpm or 0) / 6
        self.tokens = self.capacity
        self.refilled_at = clock()
        # RPM slice: 1 s, or wider below 60 RPM so that at least one request fits in it
        self.slice = 1.0 if not rpm or rpm >= 60 else math.ceil(60 / rpm)
        self.per_slice = max(1, math.floor((rpm or 0) * self.slice / 60))
        self.slice_id = math.floor(clock() / self.slice)
        self.slice_count = 0
        self.minute_id = math.floor(clock() / window)
        self.minute_tokens = self.minute_requests = 0

    def admit(self, charge: int) -> Verdict:
        if self.shape == "minute":
            return self._admit_minute(charge)
        return self._admit_azure(charge)

    # -- Azure: RPM per slice, TPM bucket over 10 s

    def _admit_azure(self, charge: int) -> Verdict:
        now = self.clock()
        self._refill(now)
        if self.rpm:
            slice_id = math.floor(now / self.slice)
            if slice_id != self.slice_id:
                self.slice_id, self.slice_count = slice_id, 0
            if self.slice_count + 1 > self.per_slice:
                return self._deny_azure(max(0.001, (slice_id + 1) * self.slice - now))
        cost = min(charge, self.capacity) if self.tpm else 0
        if self.tpm and cost > self.tokens:
            return self._deny_azure((cost - self.tokens) / (self.tpm / 60))
        self.tokens -= cost
        self.slice_count += 1
        return Verdict(True, None, self._remaining_requests(), self._remaining_tokens())

    def _deny_azure(self, wait: float) -> Verdict:
        return Verdict(False, wait, self._remaining_requests(), self._remaining_tokens())

    def _refill(self, now: float) -> None:
        if self.tpm:
            self.tokens = min(self.capacity, self.tokens + (now - self.refilled_at) * self.tpm / 60)
        self.refilled_at = now

    def _remaining_requests(self) -> int | None:  # like Azure: a header only for a quota that is enforced
        return max(0, self.per_slice - self.slice_count) if self.rpm else None

    def _remaining_tokens(self) -> int | None:
        return int(self.tokens) if self.tpm else None

    # -- fixed windows on the wall-clock minute, no hints

    def _admit_minute(self, charge: int) -> Verdict:
        minute_id = math.floor(self.clock() / self.window)
        if minute_id != self.minute_id:
            self.minute_id, self.minute_tokens, self.minute_requests = minute_id, 0, 0
        self.minute_requests += 1  # refused requests count too
        over_rpm = self.rpm is not None and self.minute_requests > self.rpm
        over_tpm = self.tpm is not None and self.minute_tokens + charge > self.tpm and self.minute_tokens > 0
        if over_rpm or over_tpm:
            return Verdict(False, None, None, None)
        self.minute_tokens += charge
        return Verdict(True, None, None, None)
