"""``asyncbatch report``: one self-contained HTML file of a run, during it or after it (``report/page.py``).

What it may write is decided before anything is read (``check_output``): a new file, or a page it wrote
before, in a directory that exists and is not the run's state directory. Anything else at that name (the
run's input or outputs, its checkpoint, a link, a device, a FIFO, a directory, a file of the user's) is
left alone, and the command says so (exit 2).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import StatePaths, default_errors
from ..errors import ConfigError, OutputError
from ..redact import Redactor
from ..report.page import GENERATOR, read_run, render
from ..store.files import PRIVATE, atomic_file
from .parser import EXIT_FATAL, EXIT_OK, build_report_parser

HEAD = 1024  # where a page of ours names its generator (its first lines)


def default_report(results: Path) -> Path:
    return results.with_name(f"{results.stem}.report.html")


def report_main(argv: Sequence[str], redactor: Redactor) -> int:
    args = build_report_parser().parse_args(argv)
    try:
        results = check_results(args.results)
        out: Path = args.output if args.output is not None else default_report(results)
        errors = args.errors or default_errors(results)
        check_output(out, results, errors)
        run = read_run(results, errors, redactor)
        page = render(run).encode()
        with atomic_file(out, mode=PRIVATE) as f:  # a reader sees the old page or the new one; 0600 like its sources
            f.write(page)
    except (ConfigError, OutputError) as exc:
        print(f"asyncbatch report: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except OSError as exc:
        print(f"asyncbatch report: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FATAL
    print(f"report: {out} ({len(page) / 1e6:.1f} MB; opens from disk, no network)", file=sys.stderr)
    return EXIT_OK


def check_results(results: Path) -> Path:
    """``results`` if it names a results file that exists.

    :raises ConfigError: it names no file (``.``, ``/``, an empty name), a directory, or nothing there.
    """
    hint = "HINT: give the results file of a run, e.g. prompts.results.jsonl"
    if not results.name or results.name == "..":
        raise ConfigError(f"{str(results) or repr('')} is not a results file. {hint}")
    if results.is_dir():
        raise ConfigError(f"{results} is a directory, not a results file. {hint}")
    beside = results.with_name(f"{results.stem}.results.jsonl")  # if ``results`` is the run's input
    if not results.exists() and not results.is_symlink():
        if beside.is_file():
            hint = f"HINT: {results} may be the run's input: its results are {beside}"
        raise ConfigError(f"{results} does not exist. {hint}")
    if not StatePaths.beside(results).dir.exists() and StatePaths.beside(beside).dir.is_dir():
        raise ConfigError(f"{results} has no run's state beside it. HINT: it may be the run's input: its results "
                          f"are {beside}: asyncbatch report {beside}")  # fmt: skip
    return results


def check_output(out: Path, results: Path, errors: Path) -> None:
    """Refuse an ``out`` that the page may not replace: see the module's docstring.

    :raises ConfigError: naming ``out``, what is there, and what to do.
    """
    if not out.name or out.name == "..":
        raise ConfigError(f"-o {str(out) or repr('')}: give a file name, e.g. -o report.html")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"-o {out}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"-o {out}: no permission to write in {parent}")
    state = StatePaths.beside(results).dir
    if state.is_dir() and parent.resolve().is_relative_to(state.resolve()):
        raise ConfigError(f"-o {out} is inside the run's state directory {state}; write the report elsewhere")
    for own in (results, errors):
        if out.resolve() == own.resolve():
            raise ConfigError(f"-o {out} is a file of the run ({own}); write the report to another file")
    _check_replaceable(out)


def _check_replaceable(out: Path) -> None:
    """Nothing at ``out``, an empty file, or a page asyncbatch report wrote: anything else is left alone."""
    try:
        info = out.lstat()
    except FileNotFoundError:
        return
    leave = "it is left as it is. HINT: choose another file name with -o, or move it away"
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"-o {out} is a symbolic link; {leave}")
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"-o {out} is a directory; give a file name, e.g. -o {out / 'report.html'}")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"-o {out} is not a regular file (a device, a FIFO or a socket); {leave}")
    fd = os.open(out, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        head = f.read(HEAD)
    if head and GENERATOR.encode() not in head:
        raise ConfigError(f"-o {out} is not a report asyncbatch wrote (it begins {head[:20]!r}); {leave}")
