"""Which signals stop a run, and which of them stop it at once.

The first SIGINT, SIGTERM or SIGHUP stops a run gracefully: no new requests, those in flight get ``--grace``
seconds, and every answer is recorded. Only the user's own Ctrl-C, again, stops it at once, cancelling what is
in flight (answers the server may bill and nobody records). So a second signal escalates only when

- it is a SIGINT: SIGHUP and SIGTERM come from the system, and the system repeats them. A closing SSH session
  delivers SIGHUP twice, about a millisecond apart (the kernel's, and the shell's forwarding it to its jobs); a
  supervisor's SIGTERM is followed by its own SIGKILL when it stops waiting, never by a second SIGTERM;
- and it comes ``SETTLE`` seconds or more after the first: a wrapper that forwards the terminal's SIGINT to its
  child (which got it from the terminal too) delivers it twice within milliseconds; a person pressing Ctrl-C
  again, having read "stopping", does so later.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from enum import Enum

# Each stops a run gracefully (SIGHUP: the terminal went away, e.g. an SSH session closed).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
SETTLE = 0.5  # seconds: a repeat sooner than this is the same request delivered twice


class Stop(Enum):
    GRACEFUL = "graceful"  # no new requests; those in flight finish (first signal)
    NOW = "now"  # cancel what is in flight (the user's Ctrl-C, again)
    IGNORED = "ignored"  # a repeat that asks for nothing more


class StopRequests:
    """Pure policy: what each signal asks for, given those before it (``clock`` injected)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, settle: float = SETTLE) -> None:
        self._clock = clock
        self._settle = settle
        self._first: float | None = None
        self._escalated = False

    def on(self, signum: int) -> Stop:
        now = self._clock()
        if self._first is None:
            self._first = now
            return Stop.GRACEFUL
        if self._escalated or signum != signal.SIGINT or now - self._first < self._settle:
            return Stop.IGNORED
        self._escalated = True
        return Stop.NOW


@contextlib.contextmanager
def handled(handler: Callable[[int], object]) -> Iterator[None]:
    """``handler(signum)`` on SIGINT, SIGTERM and SIGHUP while inside; then the handlers from before (exit 130)."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    installed = []
    for sig in previous:
        with contextlib.suppress(ValueError, RuntimeError):  # not in the main thread: the caller's own handling
            loop.add_signal_handler(sig, handler, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            if previous[sig] is not None:
                signal.signal(sig, previous[sig])  # asyncio puts the defaults back; the caller's are wanted
