"""With no quota given: the rate learned from 429s and headers (AIMD), and fixed-minute windows noticed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

from ..clock import Clock
from ..protocol import REMAINING_REQUESTS, REMAINING_TOKENS, int_header

WINDOW = 10.0  # seconds over which Azure checks TPM
MINUTE = 60.0
WINDOW_USED = "the server's per-minute window is used up"


class FixedWindows:
    """Fixed wall-clock windows (a gateway's per-minute budget, refusals with no hint), judged by what each admitted.

    Every request counts in the window it was *sent* in: what we sent (to pace), and what the
    server admitted (its successes). A round of hint-less refusals (``refusals.Rounds``) that
    began in one window and lasted until a request sent just after the next boundary was
    admitted says that window's budget was used up: it admitted nothing sent after the round
    began, and that budget is what it had admitted. Two such windows in a row, with budgets
    within 2x of each other, make fixed windows: one could be chance (a gateway shedding load at
    random), two with the same budget are a limit. Then each window is paced to stay inside the
    budget (``budget_wait``), and a hint-less 429 waits for the next boundary only when its window
    has used at least half the budget (``used_up``). A refusal well short of the budget, followed
    by an admission in the same window, says the windows were a misreading.

    All amounts are admission's charges: the server's units once calibration has learned them
    from its headers, else the client's estimate.

    :param wall: wall-clock seconds (time.time); injected for tests.
    """

    def __init__(
        self, wall: Clock = time.time, *, period: float = MINUTE, min_streak: float = 3.0, tolerance: float = 1.0
    ) -> None:
        self.wall, self.period, self.min_streak, self.tolerance = wall, period, min_streak, tolerance
        self.detected = False
        self.budget = 0.0  # what one window admits, once detected: the most of the windows that showed it
        self._admitted: dict[int, float] = {}  # successes' charges, by the window they were sent in (the last few)
        self._sent: tuple[int, float] = (-1, 0.0)  # what was sent in the current window (refused ones given back)
        self._first: int | None = None  # the run's first window: partial, so no minute's limit is read from it
        self._best_full: float | None = None  # the most admitted in a whole window that has ended (pruned ones)
        self._candidate: tuple[int, float] | None = None  # (window, budget) of the last window used up

    def window(self, wall: float | None = None) -> int:
        return int((self.wall() if wall is None else wall) // self.period)

    def on_sent(self, charge: float) -> None:
        now = self.window()
        if self._first is None:
            self._first = now
        window, sent = self._sent
        self._sent = (now, (sent if window == now else 0.0) + charge)

    def on_refused(self, sent_wall: float, charge: float) -> None:
        """A refusal: the server did not count it; what was sent in its window is that much less."""
        window, sent = self._sent
        if window == self.window(sent_wall):
            self._sent = (window, max(0.0, sent - charge))

    def on_admitted(self, sent_wall: float, charge: float) -> None:
        """A success, sent at ``sent_wall``, charged ``charge``: counted in the window it was sent in."""
        window = self.window(sent_wall)
        self._admitted[window] = self._admitted.get(window, 0.0) + charge
        for old in [w for w in self._admitted if w < window - 3]:
            if self._first is not None and old > self._first:
                self._best_full = max(self._best_full or 0.0, self._admitted[old])
            del self._admitted[old]

    @property
    def most_completed(self) -> float | None:
        """The most the server admitted in one whole window that has ended (None: none has)."""
        now = self.window()
        ended = [v for w, v in self._admitted.items() if self._first is not None and self._first < w < now]
        return max([*ended, *([self._best_full] if self._best_full is not None else [])], default=None)

    def on_round_end(self, began_wall: float, ended_wall: float, last_pause: float) -> None:
        """A round of hint-less refusals that began with a request sent at ``began_wall`` ended: a request sent
        at ``ended_wall`` was admitted, the first sent since the round began; ``last_pause`` was its last pause."""
        began, ended = self.window(began_wall), self.window(ended_wall)
        if ended == began:
            if self.detected and self._admitted.get(began, 0.0) < self.budget / 2:
                self.detected = False  # refused far short of the budget, then admitted again: not the window
            return
        if ended_wall - began_wall < self.min_streak:
            return  # a short round across a boundary: chance
        if ended_wall % self.period > last_pause + self.tolerance:
            self.detected, self._candidate = False, None  # admitted again long after the boundary: a limit of time
            return
        budget = self._admitted.get(began, 0.0)  # nothing sent in it after the round began was admitted
        last = self._candidate
        self._candidate = (began, budget)
        if last is not None and last[0] == began - 1 and 0.5 <= budget / max(last[1], 1e-9) <= 2.0:
            self.detected, self.budget = True, max(budget, last[1])

    def used_up(self) -> bool:
        """Whether a hint-less 429 now is the window's: detected, and this window has used half its budget.

        If so, the budget is no more than this window took (another client may have come to share it).
        """
        window, sent = self._sent
        if not (self.detected and window == self.window() and sent >= self.budget / 2):
            return False
        self.budget = min(self.budget, sent)
        return True

    by_server, source, final = True, WINDOW_USED, False  # a gate (``gates.Gate``): a window's turn is the server's hold

    def wait(self, charge: float, retry: bool = False) -> float:
        """Seconds to hold a request of ``charge`` so that this window stays inside its budget (0: now)."""
        window, sent = self._sent
        if not self.detected or window != self.window() or sent == 0 or sent + charge <= self.budget:
            return 0.0
        return self.until_boundary()

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

    def on_refused(self, tokens: float) -> None:
        """A request admitted here was refused: the server did not count it, so neither does the observed rate."""
        now = self.clock()
        self._admitted.append((now, -tokens))
        self._admitted_sum -= tokens

    def on_throttle(self, at_least: float = 0.0) -> None:
        """A 429 that is news about the rate: the first sets it to half what was admitted over the last
        window, each later one cuts it; never below ``at_least``, tokens a second the server was seen to admit."""
        if self.rate is None:
            self._set(max(self.floor, self.observed_rate() / 2, at_least))
        else:
            self._cut(self.decrease, at_least)

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

    def _cut(self, factor: float, at_least: float = 0.0) -> None:
        now = self.clock()
        self._last_trouble = now
        if self.rate is None or now - self._last_cut < self.hold or not self._admitted_since_cut:
            return
        if (cut := max(self.floor, self.rate * factor, at_least)) < self.rate:
            self._set(cut)

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
