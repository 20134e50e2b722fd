"""``python -m asyncbatch`` and the ``asyncbatch`` command -> ``cli.main()``.

Ctrl-C, SIGTERM and SIGHUP are caught from the first instant. Outside a run (starting up, building
the configuration, printing the summary) nothing is being written, so a signal there ends
the process at once with exit code 130 and a message; during a run, the run's own handlers
stop it gracefully (``cli._run``).
"""

import contextlib
import os
import signal
import sys

EXIT_INTERRUPTED = 130
MESSAGE = b"asyncbatch: interrupted outside the run; nothing is lost. Run the same command again\n"


def _exit_at_once(signum: int, frame: object) -> None:
    with contextlib.suppress(OSError):  # stderr gone (a terminal that hung up, a pipe closed): the exit code says it
        os.write(2, MESSAGE)
    os._exit(EXIT_INTERRUPTED)


def run() -> int:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # SIGHUP: the terminal went away (not on Windows)
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _exit_at_once)
    from .cli.main import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
