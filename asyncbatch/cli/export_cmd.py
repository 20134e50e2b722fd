"""``asyncbatch export``: results (and failures) in input order, joined with the input, as JSONL, CSV or Parquet."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import default_errors
from ..errors import ConfigError
from ..export import ExportReport, Rows, check_output, export, format_for
from .parser import EXIT_FATAL, EXIT_OK, build_export_parser


def export_main(argv: Sequence[str]) -> int:
    args = build_export_parser().parse_args(argv)
    try:
        for path in (args.results, args.errors, args.input):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} does not exist or is not a file")
        errors = args.errors or default_errors(args.results)
        sources = {path.resolve() for path in (args.results, errors, args.input) if path is not None}
        if args.output is not None:
            check_output(args.output)
        if args.output is not None and args.output.resolve() in sources:
            raise ConfigError(f"-o {args.output} would overwrite a file export reads; write to another file")
        rows = Rows(args.results, errors if errors.is_file() else None, args.input, args.ordered)
        fmt = format_for(args.output, args.format)
        report = export(rows, fmt, args.output, sys.stdout.buffer, keep_formulas=args.keep_formulas)
    except ConfigError as exc:
        print(f"asyncbatch export: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except OSError as exc:
        print(f"asyncbatch export: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FATAL
    print(export_summary(report, args.output), file=sys.stderr)
    return EXIT_OK


def export_summary(report: ExportReport, out: Path | None) -> str:
    where = f" to {out}" if out else ""
    text = f"exported {report.rows:,} rows{where} ({report.succeeded:,} succeeded, {report.failed:,} failed)"
    if report.missing:
        text += f"; {report.missing:,} input lines have no result yet (run the same command again to finish)"
    if report.duplicates:
        text += f"; {report.duplicates:,} repeated line numbers left out (the outputs were edited or joined)"
    if report.unreadable:
        text += f"; {report.unreadable:,} unreadable output lines skipped"
    return text
