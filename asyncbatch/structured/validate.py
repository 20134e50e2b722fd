"""Structured output you can trust: check what the model returned before it reaches the results.

* ``OutputCheck.extract`` turns a chat completion into the row's ``output``:
  tool-call arguments (or, with ``--response-format``, the message content)
  parsed and validated against their JSON Schema with ``jsonschema``. Invalid
  output raises ``InvalidOutput`` (asked again) carrying feedback messages, so the
  next attempt can tell the model what was wrong.
* ``finish_reason`` is checked first: ``length`` (truncated) and
  ``content_filter`` are errors that asking again will not fix; so is the
  model's own refusal (``message.refusal``, or a Responses ``refusal`` part),
  a ``LineRefused`` of code ``refusal`` quoting what the model said.
* The output is parsed by ``protocol.read_json``: JSON nested deeper than it takes is
  ``response_too_deep``, recorded with the answer and its usage and not asked again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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


class OutputCheck:
    """How a completion becomes a row's ``output``, and whether to trust it.

    :param tools: the tools sent with every request (validated by function name).
    :param response_format: a json_schema response format; its content is validated.
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
        if response_format is not None:
            schema = response_format["json_schema"].get("schema") or {}
            self.content = compile_schema(schema, "the --response-format schema")

    def extract_for(self, api: str, body: dict[str, Any], request: dict[str, Any]) -> Any:
        """The row's ``output`` for an answer of ``api`` to ``request``."""
        if api == "embeddings":
            vectors = embedding_vectors(body)
            return vectors[0] if len(vectors) == 1 and not isinstance(request.get("input"), list) else vectors
        if api == "responses":
            return self._response(body, request)
        return self.extract(body)

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
        tools = self._request_tools(request)
        if tools:
            call = next((i for i in items if i.get("type") == "function_call"), None)
            if call is None:
                raise _invalid_response("no_tool_call", "the model answered without calling a tool", body, text, None)
            name, raw = str(call.get("name")), str(call.get("arguments", ""))
            validator = tools.get(name)
            if validator is None:
                raise _invalid_response(
                    "invalid_tool_arguments", f"the model called an unknown tool {name!r}", body, text, call
                )
            value = _parse_response(raw, validator, f"the arguments for tool {name!r}", body, text, call)
            return self._by_model(name, value, lambda why: _invalid_response(_code(call), why, body, text, call, raw))
        schema = ((request.get("text") or {}).get("format") or {}).get("schema")
        if isinstance(schema, dict):
            validator = self._compiled(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), schema, "text.format")
            return _parse_response(text, validator, "the JSON text", body, text, None)
        return text

    def _request_tools(self, request: dict[str, Any]) -> dict[str, Draft202012Validator]:
        """Validators for the function tools a Responses request carries (compiled once per schema)."""
        found = {}
        for tool in request.get("tools") or ():
            if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str):
                schema = tool.get("parameters") or {}
                key = orjson.dumps([tool["name"], schema], option=orjson.OPT_SORT_KEYS)
                found[tool["name"]] = self._compiled(key, schema, f"the schema of tool {tool['name']!r}")
        return found

    def _compiled(self, key: bytes, schema: Any, where: str) -> Draft202012Validator:
        if (validator := self._cache.get(key)) is None:
            validator = self._cache[key] = compile_schema(schema, where)
        return validator

    def extract(self, body: dict[str, Any]) -> Any:
        choice = body["choices"][0]
        message = choice.get("message") or {}
        _check_finish(choice.get("finish_reason"), body)
        _check_refusal(message.get("refusal"), body)
        if self.tools:
            return self._tool_arguments(message, body)
        if self.content is not None:
            return self._content(message, body)
        return message.get("content")

    def _tool_arguments(self, message: dict[str, Any], body: dict[str, Any]) -> Any:
        calls = message.get("tool_calls") or []
        if not calls:
            raise _invalid("no_tool_call", "the model answered without calling a tool", body, message, None)
        call = calls[0]
        function = call.get("function") or {}
        name, raw = function.get("name"), function.get("arguments", "")
        validator = self.tools.get(name)
        if validator is None:
            raise _invalid("invalid_tool_arguments", f"the model called an unknown tool {name!r}", body, message, call)
        value = _parse_and_validate(raw, validator, f"the arguments for tool {name!r}", body, message, call)
        return self._by_model(name, value, lambda reason: _invalid(_code(call), reason, body, message, call, raw))

    def _content(self, message: dict[str, Any], body: dict[str, Any]) -> Any:
        assert self.content is not None
        raw = message.get("content") or ""
        value = _parse_and_validate(raw, self.content, "the JSON content", body, message, None)
        return self._by_model(None, value, lambda reason: _invalid(_code(None), reason, body, message, None, raw))

    def _by_model(self, name: str | None, value: Any, invalid: Callable[[str], AttemptError]) -> Any:
        """What the schema took, validated by its Pydantic model too (if it has one): the same JSON value."""
        if (model := self.models.get(name)) is None:
            return value
        from pydantic import ValidationError

        try:
            model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "$"
            raise invalid(f"the model {model.__name__} refuses it at {where}: {first.get('msg')}") from None
        return value


def _invalid_response(
    code: str, reason: str, body: dict[str, Any], text: str, call: Any, raw: str | None = None
) -> AttemptError:
    """As ``_invalid``, in the Responses API's input items: the call and its output, or the text and a user turn."""
    shown = f"{reason}; raw output: {_shown(raw)}" if raw is not None else reason
    instruction = f"That was invalid: {reason}. Answer again, with output that is valid JSON and matches the schema."
    feedback: list[dict[str, Any]]
    if call is not None and call.get("call_id"):
        echoed = {k: call[k] for k in ("type", "call_id", "name", "arguments") if k in call}
        feedback = [echoed, {"type": "function_call_output", "call_id": call["call_id"], "output": instruction}]
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


def _parse_and_validate(
    raw: str, validator: Draft202012Validator, what: str, body: dict[str, Any], message: dict[str, Any], call: Any
) -> Any:
    value, reason = _problem(raw, validator, what, body)
    if reason is not None:
        raise _invalid(_code(call), reason, body, message, call, raw)
    return value


def _code(call: Any) -> str:
    """A tool call's arguments, or a JSON answer (--response-format): each failure coded for what it is."""
    return "invalid_tool_arguments" if call is not None else "invalid_output"


def _parse_response(
    raw: str, validator: Draft202012Validator, what: str, body: dict[str, Any], text: str, call: Any
) -> Any:
    value, reason = _problem(raw, validator, what, body)
    if reason is not None:
        raise _invalid_response(_code(call), reason, body, text, call, raw)
    return value


def _json_path(error: ValidationError) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _invalid(
    code: str, reason: str, body: dict[str, Any], message: dict[str, Any], call: Any, raw: str | None = None
) -> AttemptError:
    """Invalid output, whose feedback shows the model its answer and what was wrong with it."""
    text = f"{reason}; raw output: {_shown(raw)}" if raw is not None else reason
    instruction = f"That was invalid: {reason}. Answer again, with output that is valid JSON and matches the schema."
    if call is not None and call.get("id"):
        # Only the call we answer: the API wants a tool reply for every call id in the message.
        assistant = {"role": "assistant", "content": message.get("content"), "tool_calls": [call]}
        feedback = [assistant, {"role": "tool", "tool_call_id": call["id"], "content": instruction}]
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
