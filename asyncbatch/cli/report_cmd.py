"""``asyncbatch report``: one self-contained HTML file of a run, during it or after it (``report/page.py``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import default_errors
from ..errors import ConfigError, OutputError
from ..redact import Redactor
from ..report.page import read_run, render
from ..store.files import atomic_file
from .parser import EXIT_FATAL, EXIT_OK, build_report_parser

READABLE = 0o644  # a page to open and share, unlike the run's private state files


def default_report(results: Path) -> Path:
    return results.with_name(f"{results.stem}.report.html")


def report_main(argv: Sequence[str], redactor: Redactor) -> int:
    args = build_report_parser().parse_args(argv)
    out: Path = args.output or default_report(args.results)
    try:
        errors = args.errors or default_errors(args.results)
        if out.resolve() in {args.results.resolve(), errors.resolve()}:
            raise ConfigError(f"-o {out} would overwrite a file of the run; write the report to another file")
        run = read_run(args.results, errors, redactor)
        page = render(run, redactor).encode()
        with atomic_file(out, mode=READABLE) as f:  # a reader sees the old page or the new one
            f.write(page)
    except (ConfigError, OutputError) as exc:
        print(f"asyncbatch report: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except OSError as exc:
        print(f"asyncbatch report: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FATAL
    print(f"report: {out} ({len(page) / 1e6:.1f} MB; opens from disk, no network)", file=sys.stderr)
    return EXIT_OK
