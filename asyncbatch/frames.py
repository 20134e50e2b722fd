"""Tables in, tables out: ``map`` runs rows (dicts, a pandas DataFrame, a pyarrow Table) through the engine.

The rows are written as a records file and run as any input is: the same quota,
retries, exactly-once record and resume. With ``output_path`` the records file and
the run's state sit beside the results, so calling ``map`` again resumes (rows that
are the same are not sent again; rows appended are). Without it, everything goes to
a temporary directory that is removed afterwards.

The results come back in input order, flattened as ``asyncbatch export`` flattens
them (``export.flat``): a DataFrame when given one, with the same columns a CSV
export has; a list of dicts otherwise. With a Pydantic model as the tool or response
format, each result also carries the model instance (``parsed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from .config import Deployment, Endpoint, Limits, RequestDefaults, RunConfig, check_options
from .display.reporters import Reporter, default_reporter
from .export import Rows, flat, row_of
from .input.reader import input_records, record_id
from .store.files import replace_atomically


def _records(rows: Any) -> tuple[Iterable[Mapping[str, Any]], str]:
    """The rows as dicts, and what they came as: ``pandas``, ``arrow`` or ``rows``."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        return rows.to_dict("records"), "pandas"
    if hasattr(rows, "to_pylist") and hasattr(rows, "schema"):  # a pyarrow Table
        return rows.to_pylist(), "arrow"
    return rows, "rows"


def _write(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """The records file, whole or not at all; unchanged bytes when the rows are the same (so a re-run resumes)."""
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    data = b"".join(orjson.dumps(dict(row), default=_plain, option=options) + b"\n" for row in rows)
    if not (path.exists() and path.read_bytes() == data):
        replace_atomically(path, [data])


def _plain(value: Any) -> Any:
    """A cell orjson cannot write: a DataFrame's missing value (``pd.NA``, ``NaT``) as null, as NaN and None are
    (so a template naming it refuses the row), anything else as its text."""
    pandas = sys.modules.get("pandas")  # only a DataFrame's cells are pandas' own: it is loaded if they are
    if pandas is not None and pandas.api.types.is_scalar(value) and pandas.isna(value):
        return None
    return str(value)


async def map(  # asyncbatch.map, as the data world spells it: the builtin is not used here
    rows: Any,
    *,
    template: str,
    tools: Any = None,
    response_format: Any = None,
    endpoint: Endpoint | None = None,
    deployments: tuple[Deployment, ...] = (),
    limits: Limits | None = None,
    request: RequestDefaults | None = None,
    output_path: str | Path | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> Any:
    """Run ``template`` over each row; return the results in input order (a DataFrame for a DataFrame).

    :param rows: an iterable of dicts, a pandas DataFrame or a pyarrow Table; ``id`` or ``custom_id``
        names a row, else its number does.
    :param tools: tools (``load_tools``) or a Pydantic model; ``response_format`` likewise.
    :param request: further request options (``RequestDefaults``); template, tools and response format win.
    :param output_path: keep the results (and the run's state) there: a second call resumes.
    :param options: any other ``RunConfig`` option (``max_cost``, ``cache``, ``prices``, ...).
    :raises ConfigError: an option the run cannot take (a misspelt keyword...), before anything is sent.
    """
    check_options(options, call="asyncbatch.map", own=_OWN, refused=_DECIDED)
    records, kind = _records(rows)
    defaults = request_defaults(request, template=template, tools=tools, response_format=response_format)
    with contextlib.ExitStack() as stack:
        if output_path is None:
            where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asyncbatch-map-")))
            output = where / "rows.results.jsonl"
        else:
            output = Path(output_path)
        source = output.with_name(output.name.removesuffix(".jsonl") + ".rows.jsonl")
        _write(source, records)
        config = RunConfig(
            input_path=source,
            output_path=output,
            endpoint=endpoint,
            deployments=deployments,
            limits=limits or Limits(),
            request=defaults,
            given_rows=True,  # messages name the rows, not this file
            **options,
        )
        from .runner import run

        reporter = reporter or default_reporter()
        stats = await run(config, reporter=reporter)
        why = stats.stopped or ("interrupted" if stats.interrupted else "no answer was recorded for it")
        results = list(_results(config, defaults, reporter, _not_run(why, kept=output_path is not None)))
    if kind == "pandas":
        import pandas as pd

        frame = pd.DataFrame([flat(row) for row in results])
        frame.index = rows.index
        return frame
    return results


_OWN = (
    "template",
    "tools",
    "response_format",
    "endpoint",
    "deployments",
    "limits",
    "request",
    "output_path",
    "reporter",
)
_DECIDED = {"input_path": "the rows are the input", "given_rows": "map sets it"}


def request_defaults(
    request: RequestDefaults | None, *, template: str, tools: Any = None, response_format: Any = None
) -> RequestDefaults:
    """The request options ``map`` runs with: ``request``'s, with the template, tools and response format given.

    Checked when built (``RequestDefaults``): ``asyncbatch.ray`` and ``asyncbatch.spark`` call it on the driver,
    so a mistake is said once, before any worker starts.
    """
    base = request or RequestDefaults()
    given = tools is not None or response_format is not None  # then every schema is given here (never both)
    return dataclasses.replace(
        base,
        template=template,
        tools=tools if tools is not None else base.tools,
        response_format=response_format if response_format is not None else base.response_format,
        models={} if given else base.models,  # base's models were its own schemas': never a schema given here
    )


def map_sync(rows: Any, **arguments: Any) -> Any:
    """``map`` for scripts without an event loop (in a notebook, ``await asyncbatch.map(...)`` instead)."""
    return asyncio.run(map(rows, **arguments))


NOT_RUN = "not_run"  # the error code of a row the run stopped before answering


def _not_run(why: str, kept: bool) -> dict[str, str]:
    """The error of a row the run stopped before answering (``--max-cost``, an outage, an interrupt)."""
    again = "call map again with the same output_path" if kept else "call map again (with output_path, a call resumes)"
    return {"code": NOT_RUN, "message": f"not run: the run stopped early ({why}). HINT: {again} to run it"}


def _results(
    config: RunConfig, request: RequestDefaults, reporter: Reporter, not_run: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """Every input's row, in input order, joined with the input, with ``parsed`` for a model's output.

    A row the run stopped before answering is there too, failed with ``not_run``'s error: the rows are the
    input's, one for one (a DataFrame's index is the input's).

    A row answered by an earlier call (resumed) was validated by the model as it was then: where the model
    now refuses it (a validator added since, which changes no schema), ``parsed`` is None, and a warning says so.
    """
    from pydantic import ValidationError

    errors = config.errors_path if config.errors_path.exists() else None
    model, refused = _model(request), 0
    answered = {row["line"]: row for row in Rows(config.output_path, errors, config.input_path, ordered=True)}
    for line_no, fields in input_records(config.input_path):
        if (row := answered.get(line_no)) is None:
            record = {"line": line_no, "custom_id": record_id(fields, line_no), "error": not_run}
            row = row_of(b"e", record, fields)
        if model is not None:
            if "parsed" in row:  # a field of the row's own
                row[_free("input_parsed", row)] = row.pop("parsed")
            if row.get("status") == "succeeded":
                try:
                    row["parsed"] = model.model_validate(row.get("output"))
                except ValidationError:
                    row["parsed"], refused = None, refused + 1
        yield row
    if refused:
        reporter.warn(
            f"{refused:,} rows answered by an earlier call are refused by the model {model.__name__} as it is now "
            "(their 'parsed' is None). HINT: another output_path asks every row again"
        )


def _free(name: str, row: dict[str, Any]) -> str:
    while name in row:
        name = f"input_{name}"
    return name


def _model(request: RequestDefaults) -> Any:
    """The model every answer is validated by: the response format's, or the one tool's. Of several tools, the
    output does not say which one was called (and a tool that is no model has none)."""
    if request.tools:
        return request.models.get(request.tools[0]["function"]["name"]) if len(request.tools) == 1 else None
    return request.models.get(None) if request.response_format else None
