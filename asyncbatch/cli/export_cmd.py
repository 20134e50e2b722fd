"""``asyncbatch export``: results (and failures) in input order, joined with the input, as JSONL, CSV or Parquet."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import (
    default_errors,
)
from ..errors import ConfigError
from ..export import FORMATS, ExportReport, Rows, export, format_for
from .parser import EXIT_FATAL, EXIT_OK

EXPORT_EPILOG = """\
rows: line, status (succeeded or failed), custom_id, the input record's fields (with --input),
output, error_code, error_message, attempts, prompt_tokens, completion_tokens. In CSV and
Parquet an object output becomes one output.<key> column per key.

examples:
  asyncbatch export prompts.results.jsonl --ordered > ordered.jsonl
  asyncbatch export prompts.results.jsonl --input prompts.jsonl -o table.csv
  asyncbatch export prompts.results.jsonl --input prompts.jsonl -o table.parquet   # pip install "asyncbatch[parquet]"

exit codes: 0 written; 2 usage error or a file that cannot be read or written.
"""


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asyncbatch export",
        description="Write a run's results and failures as one table: in input order (on disk, in bounded "
        "memory, for any number of lines), joined with the input, as JSONL, CSV or Parquet.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", type=Path, help="the results file of a run (e.g. prompts.results.jsonl)")
    p.add_argument(
        "--errors", type=Path, metavar="PATH", help="its failures file (default: <results stem>.errors.jsonl, if any)"
    )
    p.add_argument(
        "--input",
        type=Path,
        metavar="PATH",
        help="the run's input: each row gets its input record's fields, with their JSON types (implies --ordered)",
    )
    p.add_argument("--ordered", action="store_true", help="rows in input order (default: the order they finished)")
    p.add_argument("--format", choices=FORMATS, help="jsonl, csv or parquet (default: from -o's suffix, else jsonl)")
    p.add_argument("-o", "--output", type=Path, metavar="PATH", help="where to write (default: standard output)")
    return p


def export_main(argv: Sequence[str]) -> int:
    args = build_export_parser().parse_args(argv)
    try:
        for path in (args.results, args.errors, args.input):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} does not exist or is not a file")
        errors = args.errors or default_errors(args.results)
        sources = {path.resolve() for path in (args.results, errors, args.input) if path is not None}
        if args.output is not None and args.output.resolve() in sources:
            raise ConfigError(f"-o {args.output} would overwrite a file export reads; write to another file")
        rows = Rows(args.results, errors if errors.is_file() else None, args.input, args.ordered)
        report = export(rows, format_for(args.output, args.format), args.output, sys.stdout.buffer)
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
