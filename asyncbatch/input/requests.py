"""ParsedLine -> Job: the request body to send, and its token estimate.

Pure functions; no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import Endpoint, RequestDefaults
from ..cost import Prices, lookup
from ..errors import TEMPLATE, TEMPLATE_GIVEN
from ..protocol import BATCH_URLS, Api, unsupported
from ..structured.schemas import FUNCTION_NAME
from ..structured.validate import schemas_problem
from .reader import FIRST_LINES, BadLine, ParsedLine, is_parquet, is_table, table_header


@dataclass(frozen=True, slots=True)
class Job:
    line_no: int
    custom_id: str
    body: dict[str, Any]
    payload: bytes  # body serialised once, reused by every attempt
    estimate: int  # Azure's admission estimate, in tokens
    prompt_estimate: int  # its prompt part (the rest is max_tokens x n)
    api: Api = "chat"
    line_hash: str = ""  # the input line's content digest, written in its record


def estimate_tokens(body: dict[str, Any]) -> int:
    """Azure's admission estimate: prompt characters / 4, plus max_tokens x n (x best_of).

    Azure charges this when a request arrives, before it knows the real usage.
    Without ``max_tokens`` only the prompt is counted.
    """
    return sum(split_estimate(body))


def split_estimate(body: dict[str, Any], api: Api = "chat") -> tuple[int, int]:
    """The estimate's two parts: (prompt tokens, completion tokens at most).

    Embeddings: the input's characters / 4. Responses: the input's (a string or
    messages) and the tools' characters / 4, plus ``max_output_tokens``.
    """
    if api == "embeddings":
        inputs = body.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        return -(-sum(len(t) for t in texts if isinstance(t, str)) // 4), 0
    if api == "responses":
        given = body.get("input")
        chars = len(given) if isinstance(given, str) else _messages_chars(given if isinstance(given, list) else [])
        if body.get("tools"):
            chars += len(orjson.dumps(body["tools"]))
        return -(-chars // 4), int(body.get("max_output_tokens") or 0)
    chars = _messages_chars(body.get("messages", ()))
    if body.get("tools"):
        chars += len(orjson.dumps(body["tools"]))
    max_out = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    n = max(int(body.get("n") or 1), int(body.get("best_of") or 1))
    return -(-chars // 4), int(max_out) * n


def _messages_chars(messages: Any) -> int:
    return sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))


def _content_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    return 0


class SetupError(ValueError):
    """A line the options cannot turn into a request (no template, a field it lacks): maybe every line's."""


def where(path: Path, line_no: int, *, given_rows: bool = False) -> str:
    """Where a bad line is, as a message names it: ``in.jsonl:17``; or ``row 17`` for rows given to
    ``asyncbatch.map``, whose file the caller never saw."""
    return f"row {line_no}" if given_rows else f"{path}:{line_no}"


def setup_mistake(
    path: Path,
    lines: Iterable[ParsedLine | BadLine],
    defaults: RequestDefaults,
    to: Endpoint | None = None,
    *,
    given_rows: bool = False,
) -> str | None:
    """The options' mistake every one of the first lines shares, said as what to add; None if there is none.

    A file run without ``--template``, with a template naming a field no line has, or with lines for a
    route the endpoint's api-version lacks (``to``: Responses lines on 2024-10-21), would otherwise fail
    line by line: this says so once, before anything is written. In the library's words (``template=``),
    which the command line says as its flags (``cli_words``); ``given_rows``: the rows given to
    ``asyncbatch.map``, said as rows, without the file that holds them.
    """
    reasons: set[str] = set()
    fields: set[str] = set()
    seen = 0
    for line in itertools.islice(lines, FIRST_LINES):
        if isinstance(line, BadLine):
            return None
        try:
            body = _base_body(line, defaults)
        except SetupError as exc:
            reasons.add(str(exc))
            fields.update(line.obj)
        except ValueError:
            return None
        else:
            if to is None or not (problem := unsupported(line_api(line, defaults), body, to.kind, to.api_version)):
                return None
            reasons.add(problem)  # it says what to do
        seen += 1
    if not seen or len(reasons) != 1:
        return None
    unit = "row" if given_rows or is_table(path) or is_parquet(path) else "line"
    every = f"the first {seen} {unit}s all fail the same way, so every {unit} would"
    fail = f"its one {unit} fails" if seen == 1 else every
    start = f"{fail}: {reasons.pop()}" if given_rows else f"{path}: {fail}: {reasons.pop()}"
    if not fields:
        return start
    names = sorted(map(str, fields))
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    if defaults.template is None:
        example = next((n for n in names if n not in ("id", "custom_id")), "text")
        hint = f'add {TEMPLATE} over the fields of the records ({shown}), e.g. {TEMPLATE_GIVEN}...{{{example}}}..."'
        return f"{start}. HINT: {hint}"
    if is_table(path):
        return f"{start}. HINT: {_header_hint(table_header(path)[0])}"
    records = "rows'" if given_rows else "records'"
    return f"{start}. HINT: the {records} fields are {shown}: name those in {TEMPLATE}"


_NUMBER = re.compile(r"[+-]?(\d[\d,_]*(\.\d*)?|\.\d+)([eE][+-]?\d+)?%?")


def _header_hint(header: list[str]) -> str:
    """What a table's first row says of its header: its cells in file order, quoted; a number among them is
    a sign that the row is data and the table has no header row."""
    shown = ", ".join(map(repr, header[:12])) + (", ..." if len(header) > 12 else "")
    if number := next((cell for cell in header if _NUMBER.fullmatch(cell.strip())), None):
        return (
            f"its first row ({shown}) holds {number!r}, a number: it looks like data, not a header row naming "
            f"the columns. Add a header row, naming each column as {TEMPLATE} names it"
        )
    return (
        f"the columns named in its first row are {shown}: name those in {TEMPLATE} (a table's first row names "
        "its columns; if it holds values instead, add a header row)"
    )


def lines_prices(lines: Iterable[ParsedLine | BadLine]) -> Prices | None:
    """The price table's prices for the model the lines name, for a deployment whose name is not a model's."""
    model = lines_model(lines)
    prices = lookup(model) if model else None
    return dataclasses.replace(prices, source=f"{prices.source}, for the lines' model {model}") if prices else None


def lines_model(lines: Iterable[ParsedLine | BadLine]) -> str | None:
    """The model the first lines name (Batch API and chat lines may carry one), if they all name the same."""
    named = set()
    for line in itertools.islice(lines, FIRST_LINES):
        if isinstance(line, ParsedLine):
            body = line.obj.get("body") if line.kind == "batch" else line.obj
            named.add(body.get("model") if isinstance(body, dict) else None)
    model = named.pop() if len(named) == 1 else None
    return model if isinstance(model, str) and model else None


def prepare(line: ParsedLine, defaults: RequestDefaults, model: str, to: Endpoint | None = None) -> Job | BadLine:
    """Build the body for one parsed line, or say why it cannot be built. Never raises: no line stops a run.

    :param to: the endpoint it goes to: what its api-version has no place for is refused too.
    """
    try:
        job = _prepare(line, defaults, model)
        if (
            to is not None
            and isinstance(job, Job)
            and (problem := unsupported(job.api, job.body, to.kind, to.api_version))
        ):
            return BadLine(line.line_no, line.custom_id, problem, line.line_hash)
        return job
    except ValueError as exc:
        return BadLine(line.line_no, line.custom_id, str(exc), line.line_hash)
    except Exception as exc:  # a line orjson reads but cannot write again (nested too deep), and any other surprise
        return BadLine(line.line_no, line.custom_id, f"cannot build a request from this line: {exc}", line.line_hash)


def _prepare(line: ParsedLine, defaults: RequestDefaults, model: str) -> Job | BadLine:
    body = _base_body(line, defaults)
    api = line_api(line, defaults)
    body["model"] = model
    if api == "chat":
        _apply_defaults(body, defaults)
    elif api == "responses":
        _apply_responses_defaults(body, defaults)
    if problem := body_problem(body, api):
        return BadLine(line.line_no, line.custom_id, problem, line.line_hash)
    prompt, completion = split_estimate(body, api)
    return Job(line.line_no, line.custom_id, body, orjson.dumps(body), prompt + completion, prompt, api, line.line_hash)


def line_api(line: ParsedLine, defaults: RequestDefaults) -> Api:
    if line.kind == "batch":
        return BATCH_URLS.get(line.obj.get("url", ""), "chat")
    return "chat" if line.kind == "chat" else defaults.api


_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
_AT_LEAST_ONE = ("max_tokens", "max_completion_tokens", "n", "best_of")


MAX_EMBEDDING_INPUTS = 2048  # Azure's and OpenAI's specs: inputs in one embeddings request
MIN_OUTPUT_TOKENS = 16  # OpenAI's spec: the Responses API's max_output_tokens minimum


def body_problem(body: dict[str, Any], api: Api = "chat") -> str | None:
    """What the published specs refuse in this body, said the way the user can fix it; None if nothing."""
    if api == "embeddings":
        return _embeddings_problem(body.get("input"))
    if api == "responses" and (problem := _responses_problem(body)):
        return problem
    if body.get("stream"):  # a streamed answer cannot be read here: refused before it is paid for
        return "'stream': true is not supported (asyncbatch reads whole answers); remove it or set it to false"
    for name, (low, high) in _RANGES.items():
        value = body.get(name)
        if value is not None and (type(value) not in (int, float) or not low <= value <= high):
            return f"{name} must be a number from {low:g} to {high:g}, got {value!r}"
    for name in _AT_LEAST_ONE:
        value = body.get(name)
        if value is not None and (type(value) is not int or value < 1):
            return f"{name} must be a whole number of at least 1, got {value!r}"
    for tool in body.get("tools") or ():
        function = tool.get("function", tool) if isinstance(tool, dict) else None  # chat's nested, or flat
        tool_name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(tool_name, str) or not FUNCTION_NAME.match(tool_name):
            return f"tool name {tool_name!r} is not allowed: use 1-64 letters, digits, '_' or '-' (no spaces)"
        parameters = function.get("parameters") if isinstance(function, dict) else None
        if parameters is not None and (not isinstance(parameters, dict) or parameters.get("type") != "object"):
            return f"tool {tool_name!r}: 'parameters' must be an object schema"
    return schemas_problem(api, body)  # its answers are checked against them


def _embeddings_problem(given: Any) -> str | None:
    inputs = given if isinstance(given, list) else [given]
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        return f"'input' holds {len(inputs):,} inputs; an embeddings request takes at most {MAX_EMBEDDING_INPUTS:,}"
    if any(isinstance(text, str) and not text.strip() for text in inputs):
        return "'input' holds an empty string, which embeddings refuse: drop it or give it text"
    return None


def _responses_problem(body: dict[str, Any]) -> str | None:
    limit = body.get("max_output_tokens")
    if limit is not None and (type(limit) is not int or limit < MIN_OUTPUT_TOKENS):
        return f"max_output_tokens must be a whole number of at least {MIN_OUTPUT_TOKENS}, got {limit!r}"
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type") == "function" and "strict" not in tool:
            return (
                f"function tool {tool.get('name')!r} sets no 'strict', which the Responses API requires: "
                'add "strict": true (the schema must qualify) or "strict": false'
            )
    return None


def _base_body(line: ParsedLine, defaults: RequestDefaults) -> dict[str, Any]:
    if line.kind == "batch":
        return dict(line.obj["body"])
    if line.kind == "chat":
        return {k: v for k, v in line.obj.items() if k not in ("custom_id", "id")}
    if defaults.template is None:
        # --template, not template=: a bad line's reason is written to the errors file as it is
        raise SetupError("a record line (no 'messages' or 'body') needs --template to become a prompt")
    if defaults.api != "chat":
        body: dict[str, Any] = {"input": render(defaults.template, line.obj)}
        if defaults.system and defaults.api == "responses":
            body["instructions"] = defaults.system
        return body
    messages = [{"role": "user", "content": render(defaults.template, line.obj)}]
    if defaults.system:
        messages.insert(0, {"role": "system", "content": defaults.system})
    return {"messages": messages}


def render(template: str, record: dict[str, Any]) -> str:
    """str.format over the record's fields; a missing field is a SetupError naming it, a null one a ValueError.

    A null (JSON null, a table's empty cell that is not text: a Parquet null, a DataFrame's NaN or None)
    would otherwise be sent as the word ``None``, and paid for; CSV has no null (an empty cell is ``""``).
    It is this line's mistake, not the options' (``SetupError``): the line fails, the others run.
    """
    for name in template_fields(template):
        if name in record and record[name] is None:
            raise ValueError(f"template field {name!r} is null (empty in the table)")
    try:
        return template.format_map(record)
    except KeyError as exc:
        raise SetupError(f"template field {exc.args[0]!r} is missing from this record") from None
    except (IndexError, ValueError, AttributeError) as exc:
        raise ValueError(f"cannot render template on this record: {exc}") from None


@functools.lru_cache(maxsize=8)
def template_fields(template: str) -> tuple[str, ...]:
    """The record fields ``template`` names: ``{text}``, and ``{meta.lang}``'s or ``{tags[0]}``'s first part."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:  # an unbalanced brace: format_map says so, as for any line
        return ()
    names = (re.split(r"[.\[]", name, maxsplit=1)[0] for _, name, _, _ in parsed if name)
    return tuple(dict.fromkeys(n for n in names if n and not n.isdigit()))


def _apply_defaults(body: dict[str, Any], defaults: RequestDefaults) -> None:
    if defaults.max_tokens is not None and not ("max_tokens" in body or "max_completion_tokens" in body):
        body["max_tokens"] = defaults.max_tokens
    if defaults.temperature is not None:
        body.setdefault("temperature", defaults.temperature)
    if defaults.tools:
        body["tools"] = defaults.tools
        if len(defaults.tools) == 1:
            name = defaults.tools[0]["function"]["name"]
            body["tool_choice"] = {"type": "function", "function": {"name": name}}
    if defaults.response_format:
        body.setdefault("response_format", defaults.response_format)


def _apply_responses_defaults(body: dict[str, Any], defaults: RequestDefaults) -> None:
    """The Responses API's shapes: flat function tools, ``text.format``, ``max_output_tokens``."""
    if defaults.max_tokens is not None:
        body.setdefault("max_output_tokens", defaults.max_tokens)
    if defaults.temperature is not None:
        body.setdefault("temperature", defaults.temperature)
    if defaults.tools:
        body["tools"] = [{"type": "function", "strict": False, **t["function"]} for t in defaults.tools]
        if len(defaults.tools) == 1:
            body["tool_choice"] = {"type": "function", "name": defaults.tools[0]["function"]["name"]}
    if defaults.response_format:
        body.setdefault("text", {"format": {"type": "json_schema", **defaults.response_format["json_schema"]}})


def with_feedback(body: dict[str, Any], feedback: list[dict[str, Any]]) -> bytes:
    """The request again, with the model's invalid answer and what was wrong with it appended."""
    if "messages" in body:
        return orjson.dumps({**body, "messages": [*body["messages"], *feedback]})
    given = body.get("input")
    items = given if isinstance(given, list) else [{"role": "user", "content": given}]
    return orjson.dumps({**body, "input": [*items, *feedback]})  # the Responses API
