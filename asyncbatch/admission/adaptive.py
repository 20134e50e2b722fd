"""With no quota given: the rate learned from 429s and headers (AIMD), and fixed-minute windows noticed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

from ..clock import Clock
from ..protocol import REMAINING_REQUESTS, REMAINING_TOKENS, int_header

WINDOW = 10.0  # seconds over which Azure checks TPM
MINUTE = 60.0


class FixedWindows:
    """Notices a server whose 429s clear on the wall-clock minute (fixed windows, no hints).

    After a run of hint-less 429s that lasted ``min_streak`` seconds or more, the
    first success tells where the window turned: within ``tolerance`` plus the
    last pause after a minute boundary means fixed minutes (until a later
    recovery says otherwise). Then a hint-less 429 waits for the next boundary.

    It also counts what the server admitted in each wall-clock window: no learned
    limit may claim more than the server ever let through in one (``most``).

    :param wall: wall-clock seconds (time.time); injected for tests.
    """

    def __init__(self, wall: Clock = time.time, *, period: float = MINUTE, min_streak: float = 3.0) -> None:
        self.wall, self.period, self.min_streak = wall, period, min_streak
        self.detected = False
        self._streak_since: float | None = None
        self._last_pause = 0.0
        self._window = -1  # the wall-clock window now counting, by number
        self._admitted = 0.0  # charged tokens of the successes in it
        self.most = 0.0  # in any window so far, this one included
        self.most_completed: float | None = None  # in any window that has ended (None: none has)

    def on_admitted(self, charge: float) -> None:
        """A success, charged ``charge`` tokens: counted in its wall-clock window."""
        window = int(self.wall() // self.period)
        if window != self._window:
            if self._window >= 0:
                self.most_completed = max(self.most_completed or 0.0, self._admitted)
            self._window, self._admitted = window, 0.0
        self._admitted += charge
        self.most = max(self.most, self._admitted)

    def on_no_hint(self, pause: float) -> None:
        if self._streak_since is None:
            self._streak_since = self.wall()
        self._last_pause = pause

    def on_success(self) -> None:
        if self._streak_since is None:
            return
        now = self.wall()
        if now - self._streak_since >= self.min_streak:
            self.detected = now % self.period <= self._last_pause + 1.0
        self._streak_since = None

    def until_boundary(self) -> float:
        return self.period - self.wall() % self.period + 0.2


class AdaptiveRate:
    """AIMD on the admitted token rate, for when the quota is not given.

    Starts unlimited (bounded by the concurrency). The first 429 sets the rate
    to half of what was admitted over the last window (like TCP's slow start
    ending); each later 429 cuts it by ``decrease``, and a response reporting
    fewer than two requests' worth of tokens left cuts it by ``ease``, so the
    rate settles before the server has to refuse. One burst yields many 429s,
    so cuts happen at most once per ``hold`` seconds. After two quiet seconds,
    the rate grows by ``increase`` per second, or four times that while the
    remaining-budget headers say at least half of the budget is unused.

    :param clock: monotonic seconds; injected so the policy is tested without sleeping.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        decrease: float = 0.75,
        ease: float = 0.95,
        increase: float = 0.04,
        hold: float = 0.5,
        floor: float = 50.0,
    ) -> None:
        self.clock = clock
        self.decrease, self.ease, self.increase, self.hold, self.floor = decrease, ease, increase, hold, floor
        self.rate: float | None = None  # tokens per second; None = not learned yet
        self._admitted: deque[tuple[float, float]] = deque()
        self._admitted_sum = 0.0
        self._last_cut = self._last_grow = self._last_trouble = clock()
        self._most_left: dict[str, int] = {}  # highest remaining-budget header seen, per header
        self._plenty = False  # the last response said at least half the budget was left
        self._admitted_since_cut = False  # a 429 is news about the current rate only if it was used

    def on_admit(self, tokens: float) -> None:
        self._admitted_since_cut = True
        now = self.clock()
        self._admitted.append((now, tokens))
        self._admitted_sum += tokens
        while self._admitted and self._admitted[0][0] < now - WINDOW:
            self._admitted_sum -= self._admitted.popleft()[1]

    def observed_rate(self) -> float:
        """Tokens per second admitted over the last window."""
        if not self._admitted:
            return 0.0
        span = max(1.0, self.clock() - self._admitted[0][0])
        return self._admitted_sum / span

    def on_throttle(self) -> None:
        if self.rate is None:
            self._set(max(self.floor, self.observed_rate() / 2))
        else:
            self._cut(self.decrease)

    def on_headers(self, headers: Mapping[str, str], estimate: float) -> None:
        tokens = int_header(headers, REMAINING_TOKENS)
        if tokens is not None and tokens < 2 * estimate and self.rate is not None:
            self._cut(self.ease)
        plenty = None
        for name in (REMAINING_TOKENS, REMAINING_REQUESTS):
            if (left := int_header(headers, name)) is not None:
                most = self._most_left[name] = max(left, self._most_left.get(name, 0))
                plenty = (plenty is not False) and left * 2 >= most
        self._plenty = bool(plenty)

    def _cut(self, factor: float) -> None:
        now = self.clock()
        self._last_trouble = now
        if self.rate is not None and now - self._last_cut >= self.hold and self._admitted_since_cut:
            self._set(max(self.floor, self.rate * factor))

    def _set(self, rate: float) -> None:
        self._admitted_since_cut = False
        self.rate = rate
        self._last_cut = self._last_grow = self._last_trouble = self.clock()

    def tick(self) -> float | None:
        """Apply the additive increase due since the last growth; return the rate."""
        now = self.clock()
        if self.rate is not None and now - self._last_trouble >= 2.0 and now - self._last_grow >= 1.0:
            boost = 4 if self._plenty else 1  # the server says half its budget is unused: catch up faster
            self.rate *= 1 + boost * self.increase * (now - self._last_grow)
            self._last_grow = now
        return self.rate
