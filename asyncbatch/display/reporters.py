"""What the user sees while a run works, and the summary at the end.

The display is refreshed by one ticker task reading ``RunStats``; requests
never call into it, so a progress display costs nothing per request.

Three forms of one picture (``Status``):

* a terminal: two lines that fit its width, the first with the bar, done/total,
  failures and ETA, the second with rates, quota, cost and retries; what does
  not fit is left out, least useful first;
* text (stderr not a terminal, e.g. a log): a timestamped line every few seconds;
* JSON (``--log-format json``): each status line and the summary one JSON object.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TextIO

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ..redact import RedactingStream, Redactor
from ..stats import RunStats, Trend
from .status import look, screen, text_line
from .summary import RESUME, summary_data, summary_table

MAX_WARNINGS = 20


# A command to paste is never folded: pasted, a folded one runs its first line alone (without the options
# after the fold: a --max-cost, say). A message shows one on a line of its own, indented, or `quoted` in a line.
QUOTED = re.compile(r"`[^`\n]*`")
GLUE = "\x00"  # stands for a space inside a `quoted` command while folding: never a break, never in a message


def fold(text: str, width: int) -> str:
    """Each line of ``text`` folded at spaces to ``width``, continuations indented; a path or URL is never cut,
    nor a command: a line that begins with a space is shown as it is, and a `quoted` part is kept whole (a
    terminal soft-wraps what is wider, and a copy of it is still one line)."""
    return "\n".join(line if line[:1].isspace() else _fold_line(line, width) for line in text.splitlines())


def _fold_line(line: str, width: int) -> str:
    glued = line if GLUE in line else QUOTED.sub(lambda quoted: quoted[0].replace(" ", GLUE), line)
    folded = textwrap.fill(glued, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    return folded.replace(GLUE, " ") or line


class Reporter:
    """Quiet reporter (-q); the base of the others. ``warn`` still prints: problems are never hidden."""

    interval = 0.5
    verbose = False  # whether ``info`` prints

    def __init__(self, stream: TextIO | None = None, redactor: Redactor | None = None) -> None:
        """:param redactor: every byte written passes through it (the run adds its secrets to it)."""
        self.redactor = redactor or Redactor()
        self.stream: TextIO = RedactingStream(stream or sys.stderr, self.redactor)  # type: ignore[assignment]
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self._warned = 0
        self.words: Callable[[str], str] = str  # the command line names options by its flags (``cli_words``)
        self.resume = RESUME  # how the summary says to resume (the command line: its command, printed below)

    def warn(self, message: str) -> None:
        self._warned += 1
        if self._warned <= MAX_WARNINGS:
            self.message("warning", self.redactor.text(self.words(message)))
        elif self._warned == MAX_WARNINGS + 1:
            self.message("warning", "... more problems not shown; every one is in the errors file")

    def info(self, message: str) -> None:
        if self.verbose:
            self.message("info", self.redactor.text(self.words(message)))

    def message(self, level: str, text: str) -> None:
        if self.stream.isatty():  # a terminal folds a long line mid-word: fold it at spaces instead
            text = fold(text, self.console.width)
        self.console.print(text, markup=False)

    async def run(self, stats: RunStats) -> None:
        """Refresh until cancelled."""
        trend = Trend(stats)
        self.start()
        try:
            while True:
                trend.sample()
                self.tick(stats, trend)
                await asyncio.sleep(self.interval)
        finally:
            trend.sample()
            self.tick(stats, trend)
            self.stop()

    def start(self) -> None:
        pass

    def tick(self, stats: RunStats, trend: Trend) -> None:
        pass

    def stop(self) -> None:
        pass

    def summary(self, stats: RunStats) -> None:
        pass


class PlainReporter(Reporter):
    """A status line every few seconds: for logs and pipes, where a bar would be noise."""

    interval = 5.0
    verbose = True

    def tick(self, stats: RunStats, trend: Trend) -> None:
        status = look(stats, trend)
        prefix = "[SIMULATED] " if status.simulated else ""
        self.console.print(prefix + text_line(status), markup=False)

    def summary(self, stats: RunStats) -> None:
        self.console.print(summary_table(stats, self.resume, self.words))


class JsonReporter(Reporter):
    """--log-format json: every status line, message and the summary is one JSON object on its own line."""

    interval = 5.0
    verbose = True

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        self.stream.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
        self.stream.flush()

    def message(self, level: str, text: str) -> None:
        self.emit("message", {"level": level, "message": text})

    def tick(self, stats: RunStats, trend: Trend) -> None:
        status = look(stats, trend)
        self.emit("status", {**asdict(status), "percent": status.percent})

    def summary(self, stats: RunStats) -> None:
        self.emit("summary", summary_data(stats, self.words))


class RichReporter(PlainReporter):
    """A terminal: two lines that fit its width, redrawn four times a second."""

    interval = 0.25

    def __init__(self, stream: TextIO | None = None, redactor: Redactor | None = None) -> None:
        super().__init__(stream, redactor)
        self.live = Live(Text(""), console=self.console, auto_refresh=False, transient=False)

    def tick(self, stats: RunStats, trend: Trend) -> None:
        lines = screen(look(stats, trend), self.console.width)
        self.live.update(Group(*lines), refresh=True)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()


class NotebookReporter(PlainReporter):
    """Jupyter: one output cell that redraws in place (IPython display updates), twice a second."""

    interval = 0.5
    width = 110

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__(sys.stderr, redactor)
        self.handle: Any = None

    def show(self, text: str) -> None:
        from IPython.display import display

        data = {"text/plain": self.redactor.text(text)}
        if self.handle is None:
            self.handle = display(data, raw=True, display_id=True)  # type: ignore[no-untyped-call]
        else:
            self.handle.update(data, raw=True)

    def tick(self, stats: RunStats, trend: Trend) -> None:
        self.show("\n".join(line.plain for line in screen(look(stats, trend), self.width)))

    def summary(self, stats: RunStats) -> None:
        console = Console(file=io.StringIO(), width=self.width, record=True)
        console.print(summary_table(stats, self.resume, self.words))
        self.show(console.export_text())


def default_reporter(redactor: Redactor | None = None) -> Reporter:
    """The library's default: a live view in Jupyter and IPython; elsewhere messages alone (a script chooses)."""
    shell = _ipython_shell()
    if shell == "ZMQInteractiveShell":  # a Jupyter kernel
        return NotebookReporter(redactor)
    if shell is not None and sys.stderr.isatty():
        return RichReporter(sys.stderr, redactor)
    return Reporter(redactor=redactor)


def _ipython_shell() -> str | None:
    """The running IPython shell's class name, if any (IPython is never imported here, only asked)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ if shell is not None else None


def make_reporter(
    *,
    quiet: bool,
    progress: bool,
    log_format: str = "text",
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> Reporter:
    stream = stream or sys.stderr
    if log_format == "json":
        return JsonReporter(stream, redactor) if progress and not quiet else _JsonSummaryOnly(stream, quiet, redactor)
    if quiet:
        return Reporter(stream, redactor)
    if progress and stream.isatty():
        return RichReporter(stream, redactor)
    if progress:
        return PlainReporter(stream, redactor)
    return _SummaryOnly(stream, redactor)


class _SummaryOnly(Reporter):
    verbose = True

    def summary(self, stats: RunStats) -> None:
        self.console.print(summary_table(stats, self.resume, self.words))


class _JsonSummaryOnly(JsonReporter):
    def __init__(self, stream: TextIO, quiet: bool, redactor: Redactor | None = None) -> None:
        super().__init__(stream, redactor)
        self.verbose, self.quiet = not quiet, quiet

    async def run(self, stats: RunStats) -> None:
        await asyncio.Event().wait()  # no status lines; cancelled at the end

    def summary(self, stats: RunStats) -> None:
        if not self.quiet:
            super().summary(stats)
