"""Structured output you can trust: check what the model returned before it reaches the results.

* ``OutputCheck.extract_for`` turns an answer into the row's ``output``:
  tool-call arguments (or, where a JSON schema is asked for, the text) parsed and
  validated with ``jsonschema`` against what the request asked: its own tools and
  schema (``request_tools``, ``answer_schema``), the run's or a line's own. Every call
  is checked; calls that differ, where one call's arguments are the output, are invalid.
  Invalid output raises ``InvalidOutput`` (asked again) carrying feedback messages, so
  the next attempt can tell the model what was wrong.
* The output is what the model wrote: an integer orjson would read rounded (past
  64 bits) is invalid output, never a float nobody wrote.
* ``finish_reason`` is checked first: ``length`` (truncated) and
  ``content_filter`` are errors that asking again will not fix; so is the
  model's own refusal (``message.refusal``, or a Responses ``refusal`` part),
  a ``LineRefused`` of code ``refusal`` quoting what the model said.
* The output is parsed by ``protocol.read_json``: JSON nested deeper than it takes is
  ``response_too_deep``, recorded with the answer and its usage and not asked again.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from ..errors import AttemptError, ConfigError, InvalidOutput, LineRefused, Refused, Transient
from ..protocol import MAX_DEPTH, TooDeep, embedding_vectors, nests_deeper, read_json

# JSON levels of a schema asyncbatch checks (strict structured outputs take 10 levels of schema: 20 of JSON); past
# them, checking it (jsonschema recurses a few frames a level) ran out of stack: an internal error, on every run.
MAX_SCHEMA_NESTING = 64


def compile_schema(schema: Any, where: str) -> Draft202012Validator:
    """A validator for ``schema``; a schema that is not valid JSON Schema is a ConfigError naming ``where``."""
    if problem := schema_problem(schema):
        raise ConfigError(f"{where} {problem}")
    return Draft202012Validator(schema)


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not one asyncbatch can check answers against, or None: the one judge of a schema."""
    try:
        return _judged(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    except orjson.JSONEncodeError:  # orjson's own limit on nesting (255), or a value that is not JSON
        return f"is not JSON nested at most {MAX_SCHEMA_NESTING} levels deep"


@functools.lru_cache(maxsize=256)  # a file's lines often carry one schema: judged once
def _judged(text: bytes) -> str | None:
    if nests_deeper(text, MAX_SCHEMA_NESTING):
        return f"nests deeper than {MAX_SCHEMA_NESTING} levels of JSON, which no service takes (strict mode: 10 levels)"
    schema = orjson.loads(text)
    try:
        Draft202012Validator.check_schema(schema)
        missing = _unresolved(schema)
    except SchemaError as exc:
        return f"is not a valid JSON Schema: {exc.message}"
    except RecursionError:  # a schema jsonschema cannot walk (its own references, without end)
        return "cannot be checked: walking it does not end"
    if missing is not None:  # found only when an answer is checked: an internal error, once the answer was paid
        return f"refers to {missing[:80]!r}, which is not in it (asyncbatch never fetches a schema)"
    return None


_DATA = frozenset({"enum", "const", "default", "examples"})  # keywords whose values are data, never schemas


def _unresolved(schema: Any) -> str | None:
    """The first ``$ref`` of ``schema`` that points at nothing in it (by its ``$id``s too), or None."""
    resource = DRAFT202012.create_resource(schema)
    resolver = Registry().with_resource("", resource).crawl().resolver_with_root(resource)
    nodes = [schema]
    while nodes:
        node = nodes.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    return ref
            nodes.extend(value for key, value in node.items() if key not in _DATA)
        elif isinstance(node, list):
            nodes.extend(node)
    return None


def request_tools(api: str, request: dict[str, Any]) -> list[tuple[str, Any]]:
    """The function tools a request carries, as (name, parameters): chat's nested, the Responses API's flat."""
    found = []
    for tool in request.get("tools") or ():
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue  # the Responses API's own tools (web search...): answered as text
        function = tool.get("function") if api == "chat" else tool
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            found.append((function["name"], function.get("parameters") or {}))
    return found


def answer_schema(api: str, request: dict[str, Any]) -> Any:
    """The JSON Schema a request asks its answer's text to follow (chat's ``response_format``, the Responses
    API's ``text.format``, of type ``json_schema``), or None."""
    if api == "chat":
        given = request.get("response_format")
        spec = given.get("json_schema") if isinstance(given, dict) and given.get("type") == "json_schema" else None
    else:
        text = request.get("text")
        spec = text.get("format") if isinstance(text, dict) else None
        spec = spec if isinstance(spec, dict) and spec.get("type") == "json_schema" else None
    if not isinstance(spec, dict):
        return None
    schema = spec.get("schema")
    return {} if schema is None else schema


def schemas_problem(api: str, request: dict[str, Any]) -> str | None:
    """Why a schema of ``request`` is not one its answers can be checked against (``schema_problem``), or None:
    judged before the request is sent, since its answer is checked against it."""
    for name, schema in request_tools(api, request):
        if problem := schema_problem(schema):
            return f"the schema of tool {name!r} {problem}"
    schema = answer_schema(api, request)
    if schema is not None and (problem := schema_problem(schema)):
        where = "response_format" if api == "chat" else "text.format"
        return f"the schema of {where} {problem}"
    return None


@dataclass(frozen=True, slots=True)
class _Asked:
    """What one request asks its answer to be, as the check reads it.

    :param tools: validators of the tools it offers, by name.
    :param call: whether it must call one (``tool_choice`` forces it, or the tools are the run's ``--tools``).
    :param one: whether its output is one call's arguments (``tool_choice`` names a function, or ``--tools``):
        several calls that differ are then no answer to it.
    :param content: the validator of its JSON text, if it asks for one.
    :param run: whether the tools are the run's (their Pydantic models validate too).
    :param run_content: whether the JSON text's schema is the run's ``--response-format`` (its model validates too).
    """

    tools: dict[str, Draft202012Validator]
    call: bool
    one: bool
    content: Draft202012Validator | None
    run: bool
    run_content: bool


# Integers orjson reads exactly; past them it reads a float, and the output would hold a number the model did not write.
EXACT_INTEGERS = range(-(2**63), 2**64)
_LONG_DIGITS = re.compile(r"\d{19}")  # no integer past them has fewer digits


def inexact_integer(raw: str) -> str | None:
    """The first integer literal of JSON text ``raw`` that orjson cannot read exactly, or None.

    Found by Python's own parser (whose integers have no bound), only for a text with 19 digits in a row.
    """
    if not _LONG_DIGITS.search(raw):
        return None
    found: list[str] = []

    def integer(text: str) -> int:
        if not found and (len(text) > 20 or int(text) not in EXACT_INTEGERS):
            found.append(text)
        return 0

    try:
        json.loads(raw, parse_int=integer)
    except ValueError:  # orjson read it: nothing else to find
        return None
    return found[0] if found else None


Invalid = Callable[[str, str, "str | None", list[dict[str, Any]]], AttemptError]  # (code, reason, raw, calls)


class OutputCheck:
    """How an answer becomes a row's ``output``, and whether to trust it: judged against what its request asked.

    The request's own tools and JSON schema are what is checked, chat's as the Responses API's: the run's
    (``--tools``, ``--response-format``), or a line's own. A call is required where ``tool_choice`` forces one,
    or the tools are the run's; otherwise text is an answer too. Every call is checked, and where the request
    asks for one call's arguments, calls that differ are invalid (one row holds one output: none is dropped).

    :param tools: the run's tools (``--tools``), sent with every request.
    :param response_format: the run's json_schema response format; its content is validated.
    :param models: Pydantic models by tool name (the response format's under None): what passes the
        schema is validated by the model too, and what it refuses is asked again like a schema violation.
    """

    def __init__(
        self,
        tools: list[dict[str, Any]] | None,
        response_format: dict[str, Any] | None,
        models: dict[str | None, Any] | None = None,
    ) -> None:
        self.models = models or {}
        self.tools = {
            t["function"]["name"]: compile_schema(t["function"].get("parameters") or {}, f"the schema of tool {name!r}")
            for t in tools or ()
            for name in [t["function"]["name"]]
        }
        self._cache: dict[bytes, Draft202012Validator] = {}
        self.content: Draft202012Validator | None = None
        self.schema: Any = None  # the run's response format's schema
        if response_format is not None:
            self.schema = response_format["json_schema"].get("schema") or {}
            self.content = compile_schema(self.schema, "the --response-format schema")

    def extract_for(self, api: str, body: dict[str, Any], request: dict[str, Any]) -> Any:
        """The row's ``output`` for an answer of ``api`` to ``request``."""
        if api == "embeddings":
            vectors = embedding_vectors(body)
            return vectors[0] if len(vectors) == 1 and not isinstance(request.get("input"), list) else vectors
        if api == "responses":
            return self._response(body, request)
        return self.extract(body, request)

    def extract(self, body: dict[str, Any], request: dict[str, Any] | None = None) -> Any:
        """A chat completion's output; ``request`` None: a request of the run's own tools and response format."""
        choice = body["choices"][0]
        message = choice.get("message") or {}
        _check_finish(choice.get("finish_reason"), body)
        _check_refusal(message.get("refusal"), body)
        calls = message.get("tool_calls") or []
        found = [((c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments", "")) for c in calls]

        def invalid(code: str, reason: str, raw: str | None, echoed: list[dict[str, Any]]) -> AttemptError:
            return _invalid(code, reason, body, message, echoed, raw)

        asked = self._asked("chat", request)
        return self._output(asked, message.get("content"), calls, found, body, invalid)

    def _response(self, body: dict[str, Any], request: dict[str, Any]) -> Any:
        """The Responses API: a function call's validated arguments, validated JSON text, or the text."""
        _check_status(body)
        items = [i for i in body["output"] if isinstance(i, dict)]
        for item in items:
            if item.get("type") == "message":
                for part in item.get("content") or ():
                    if isinstance(part, dict) and part.get("type") == "refusal":
                        said = part.get("refusal")
                        _check_refusal(said if isinstance(said, str) and said.strip() else "(no reason given)", body)
        text = "".join(
            part.get("text") or ""
            for item in items
            if item.get("type") == "message"
            for part in item.get("content") or ()
            if isinstance(part, dict) and part.get("type") == "output_text"
        )
        calls = [i for i in items if i.get("type") == "function_call"]
        found = [(c.get("name"), c.get("arguments", "")) for c in calls]

        def invalid(code: str, reason: str, raw: str | None, echoed: list[dict[str, Any]]) -> AttemptError:
            return _invalid_response(code, reason, body, text, echoed, raw)

        return self._output(self._asked("responses", request), text, calls, found, body, invalid)

    def _output(
        self,
        asked: _Asked,
        text: Any,
        calls: list[dict[str, Any]],
        found: list[tuple[Any, Any]],
        body: dict[str, Any],
        invalid: Invalid,
    ) -> Any:
        if asked.tools and (calls or asked.call):
            return self._arguments(asked, calls, found, body, invalid)
        if asked.content is not None:
            raw = text or ""
            value, reason = _problem(raw, asked.content, "the JSON content", body)
            if reason is None and asked.run_content:
                reason = self._refused_by_model(None, value)
            if reason is not None:
                raise invalid("invalid_output", reason, raw, [])
            return value
        return text

    def _arguments(
        self,
        asked: _Asked,
        calls: list[dict[str, Any]],
        found: list[tuple[Any, Any]],
        body: dict[str, Any],
        invalid: Invalid,
    ) -> Any:
        """The arguments of the answer's call, every call checked: what the request offered, valid, and (where it
        asks for one call's arguments) the same in every call."""
        if not calls:
            raise invalid("no_tool_call", "the model answered without calling a tool", None, [])
        values, first = [], None
        for name, raw in found:
            validator = asked.tools.get(name)
            if validator is None:
                raise invalid("invalid_tool_arguments", f"the model called an unknown tool {name!r}", None, calls)
            value, reason = _problem(raw, validator, f"the arguments for tool {name!r}", body)
            if reason is None and asked.run:
                reason = self._refused_by_model(name, value)
            if reason is not None:
                raise invalid("invalid_tool_arguments", reason, raw, calls)
            values.append(orjson.dumps([name, value], option=orjson.OPT_SORT_KEYS))  # compared whatever the key order
            first = value if len(values) == 1 else first
        if asked.one and len(set(values)) > 1:
            names = ", ".join(dict.fromkeys(repr(name) for name, _ in found))
            reason = f"the model made {len(calls)} different calls ({names}) where one answer holds one: call it once"
            raise invalid("invalid_tool_arguments", reason, " ".join(str(raw) for _, raw in found), calls)
        return first  # as the model wrote it, keys in its order

    def _asked(self, api: str, request: dict[str, Any] | None) -> _Asked:
        """What ``request`` asks for (None: the run's tools and response format, as every request has them)."""
        if request is None:
            run = bool(self.tools)
            return _Asked(self.tools, run, run, self.content, run, self.content is not None)
        choice = request.get("tool_choice")
        named = isinstance(choice, dict) and choice.get("type") == "function"
        run = bool(self.tools)  # the run's tools replace a line's own, in both APIs' requests
        tools = self.tools if run else self._request_tools(api, request)
        schema = answer_schema(api, request)
        if schema is None:
            content, run_content = None, False
        elif self.content is not None and (schema is self.schema or schema == self.schema):
            content, run_content = self.content, True
        else:
            where = "response_format" if api == "chat" else "text.format"
            key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
            content, run_content = self._compiled(key, schema, f"the schema of {where}"), False
        call = choice == "required" or named or (run and choice is None)
        return _Asked(tools, call, named or run, content, run, run_content)

    def _request_tools(self, api: str, request: dict[str, Any]) -> dict[str, Draft202012Validator]:
        """Validators for the function tools a request carries (compiled once per schema)."""
        found = {}
        for name, schema in request_tools(api, request):
            key = orjson.dumps([name, schema], option=orjson.OPT_SORT_KEYS)
            found[name] = self._compiled(key, schema, f"the schema of tool {name!r}")
        return found

    def _compiled(self, key: bytes, schema: Any, where: str) -> Draft202012Validator:
        if (validator := self._cache.get(key)) is None:
            validator = self._cache[key] = compile_schema(schema, where)
        return validator

    def _refused_by_model(self, name: str | None, value: Any) -> str | None:
        """Why the Pydantic model of ``name`` (if it has one) refuses what the schema took, or None."""
        if (model := self.models.get(name)) is None:
            return None
        from pydantic import ValidationError

        try:
            model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "$"
            return f"the model {model.__name__} refuses it at {where}: {first.get('msg')}"
        return None


def _invalid_response(
    code: str, reason: str, body: dict[str, Any], text: str, calls: list[dict[str, Any]], raw: str | None = None
) -> AttemptError:
    """As ``_invalid``, in the Responses API's input items: the calls and an output for each, or the text and a
    user turn."""
    shown = f"{reason}; raw output: {_shown(raw)}" if raw is not None else reason
    instruction = f"That was invalid: {reason}. Answer again, with output that is valid JSON and matches the schema."
    feedback: list[dict[str, Any]] = []
    if calls and all(call.get("call_id") for call in calls):  # the API wants an output for every call echoed
        for call in calls:
            echoed: dict[str, Any] = {k: call[k] for k in ("type", "call_id", "name", "arguments") if k in call}
            feedback += [echoed, {"type": "function_call_output", "call_id": call["call_id"], "output": instruction}]
    else:
        feedback = [{"role": "assistant", "content": text}, {"role": "user", "content": instruction}]
    return InvalidOutput(code, shown, status=200, body=body, retry_after=0.0, feedback=feedback)


def _check_status(body: dict[str, Any]) -> None:
    """A Responses answer is a success only when ``completed`` with no ``error``: as ``finish_reason`` for chat."""
    status, error = body.get("status", "completed"), body.get("error")
    reason = (body.get("incomplete_details") or {}).get("reason")
    if error or status == "failed":
        detail = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else "no reason given"
        raise Transient("response_failed", f"the response failed ({detail})", status=200, body=body)
    if status == "incomplete" or reason:
        if reason == "max_output_tokens":
            raise Refused(
                "output_truncated",
                "the output was cut off at max_output_tokens (status: incomplete). HINT: raise --max-tokens",
                status=200,
                body=body,
            )
        if reason == "content_filter":
            raise LineRefused(
                "content_filter",
                "the answer was withheld by the content filter (status: incomplete); asking again will not help",
                status=200,
                body=body,
            )
        raise Refused("response_incomplete", f"the response is incomplete ({reason})", status=200, body=body)
    if status == "cancelled":
        raise Transient("response_cancelled", "the response was cancelled", status=200, body=body)
    if status != "completed":
        raise Refused(
            "response_not_finished",
            f"the response is {status!r}, not completed (a background response? asyncbatch waits for answers)",
            status=200,
            body=body,
        )


def _check_refusal(refusal: Any, body: dict[str, Any]) -> None:
    """The model declined to answer this line: its failure, with the model's words; asking again will not help."""
    if isinstance(refusal, str) and refusal.strip():
        said = refusal if len(refusal) <= SHOWN_RAW else f"{refusal[:SHOWN_RAW]}..."
        raise LineRefused("refusal", f"the model refused to answer: {said!r}", status=200, body=body)


def _check_finish(reason: Any, body: dict[str, Any]) -> None:
    if reason == "length":
        raise Refused(
            "output_truncated",
            "the output was cut off at max_tokens (finish_reason: length). HINT: raise --max-tokens",
            status=200,
            body=body,
        )
    if reason == "content_filter":
        raise LineRefused(
            "content_filter",
            "the answer was withheld by the content filter (finish_reason: content_filter); asking again will not help",
            status=200,
            body=body,
        )


def _problem(raw: str, validator: Draft202012Validator, what: str, body: dict[str, Any]) -> tuple[Any, str | None]:
    """(the parsed value, None), or (None, why it is not valid JSON matching the schema).

    :raises Refused: ``response_too_deep``, JSON nested deeper than a record can hold.
    """
    try:
        value = read_json(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"{what}: not valid JSON ({exc})"
    except TooDeep:
        raise Refused(
            "response_too_deep",
            f"{what}: JSON nested deeper than {MAX_DEPTH} levels, too deep to keep as the output (the answer is kept). "
            "HINT: run again with --retry-failed to ask again",
            status=200,
            body=body,
        ) from None
    if (integer := inexact_integer(raw)) is not None:
        shown = integer if len(integer) <= 40 else f"{integer[:20]}...({len(integer)} digits)"
        return None, (
            f"{what}: the integer {shown} is past what can be kept exactly (64 bits: -{2**63} to {2**64 - 1}); "
            "as a number it would be rounded"
        )
    try:
        error = best_match(validator.iter_errors(value))
    except Unresolvable as exc:  # a reference the schema's judge could not follow ahead (``_unresolved``)
        raise Refused(
            "schema_unresolvable", f"{what}: the schema refers to what is not in it ({exc})", status=200, body=body
        ) from None
    except RecursionError:  # a recursive schema walks a few frames a level: an answer of 100+ levels ran out of stack
        raise Refused(
            "response_too_deep",
            f"{what}: too deep to check against the schema, or the schema refers to itself without end "
            "(the answer is kept). "
            "HINT: run again with --retry-failed to ask again",
            status=200,
            body=body,
        ) from None
    if error is not None:
        return None, f"{what}: schema violation at {_json_path(error)}: {error.message}"
    return value, None


def _json_path(error: ValidationError) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _invalid(
    code: str,
    reason: str,
    body: dict[str, Any],
    message: dict[str, Any],
    calls: list[dict[str, Any]],
    raw: str | None = None,
) -> AttemptError:
    """Invalid output, whose feedback shows the model its answer and what was wrong with it."""
    text = f"{reason}; raw output: {_shown(raw)}" if raw is not None else reason
    instruction = f"That was invalid: {reason}. Answer again, with output that is valid JSON and matches the schema."
    if calls and all(call.get("id") for call in calls):
        # The API wants a tool reply for every call id in the message: each gets the instruction.
        assistant = {"role": "assistant", "content": message.get("content"), "tool_calls": calls}
        replies = [{"role": "tool", "tool_call_id": call["id"], "content": instruction} for call in calls]
        feedback = [assistant, *replies]
    else:
        assistant = {"role": "assistant", "content": message.get("content") or ""}
        feedback = [assistant, {"role": "user", "content": instruction}]
    # retry_after=0: the server is fine, the answer was not; backing off would only waste time.
    return InvalidOutput(code, text, status=200, body=body, retry_after=0.0, feedback=feedback)


SHOWN = 200  # characters of an answer quoted in a message
SHOWN_RAW = 2000  # characters of invalid output quoted in its error (the record's body holds all of it)


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= SHOWN_RAW else f"{raw[:SHOWN_RAW]!r}... ({len(raw):,} characters)"


def answered(body: Any) -> str:
    """What the model answered, in a few words: the tools it called and with what, or its text."""
    if not isinstance(body, dict):
        return "no answer"
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        calls = [c.get("function") or {} for c in message.get("tool_calls") or []]
        items = [{"name": c.get("name"), "arguments": c.get("arguments")} for c in calls if isinstance(c, dict)]
        text = message.get("content")
    else:  # the Responses API
        output = [i for i in body.get("output") or [] if isinstance(i, dict)]
        items = [
            {"name": i.get("name"), "arguments": i.get("arguments")} for i in output if i.get("type") == "function_call"
        ]
        parts = [p for i in output for p in i.get("content") or [] if isinstance(p, dict)]
        text = " ".join(str(p.get("text", "")) for p in parts) or None
    if items:
        said = "; ".join(f"a call to {i['name']!r} with {str(i['arguments'])[:SHOWN]}" for i in items[:3])
    else:
        said = repr(str(text)[:SHOWN]) if text else "nothing (no text, no tool call)"
    return said
