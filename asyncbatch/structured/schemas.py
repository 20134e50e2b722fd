"""Tools and response formats: load them from files, and refuse what Azure would refuse, before anything is sent.

* ``load_tools`` / ``load_response_format`` read the CLI's ``--tools`` / ``--response-format`` files.
* ``check_request_schemas`` is run by ``RequestDefaults`` when it is built: function names,
  object ``parameters``, valid JSON Schema, and with ``strict`` every reason a schema does
  not qualify for strict structured outputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from .validate import compile_schema

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # what Azure accepts
MAX_TOOLS = 128
MAX_DEPTH = 10  # OpenAI/Azure structured-output limits
MAX_PROPERTIES = 5000
MAX_ENUM_VALUES = 1000
UNSUPPORTED = ("allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "patternProperties")


def _read_json(path: Path, option: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {option} file {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{option} file {path} is not valid JSON: {exc}") from None


def load_tools(path: str | Path) -> list[dict[str, Any]]:
    """A function schema, a tool, or a list of either -> a list of chat-completions tools."""
    data = _read_json(Path(path), "--tools")
    items = data if isinstance(data, list) else [data]
    tools = []
    for i, item in enumerate(items):
        function = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ConfigError(
                f"--tools file {path}: item {i} needs a function with a 'name' ({{name, description, parameters}})"
            )
        tools.append({"type": "function", "function": function})
    return tools


def load_response_format(path: str | Path) -> dict[str, Any]:
    """{name, schema, strict?}, a full response_format, or a bare JSON Schema -> a json_schema response_format."""
    path = Path(path)
    data = _read_json(path, "--response-format")
    if not isinstance(data, dict):
        raise ConfigError(f"--response-format file {path} must hold a JSON object")
    if data.get("type") == "json_schema":
        data = data.get("json_schema") or {}
    spec = dict(data) if "schema" in data else {"name": path.stem, "schema": data}
    spec.setdefault("name", path.stem)
    return {"type": "json_schema", "json_schema": spec}


def check_request_schemas(
    tools: list[dict[str, Any]] | None, response_format: dict[str, Any] | None, strict: bool
) -> None:
    """Raise ConfigError for anything Azure would refuse on every request; compile every schema."""
    if strict and not (tools or response_format):
        raise ConfigError("--strict needs --tools or --response-format")
    if tools is not None and len(tools) > MAX_TOOLS:
        raise ConfigError(f"{len(tools)} tools given; at most {MAX_TOOLS} are allowed")
    for function in (_function(tool) for tool in tools or ()):
        name = function["name"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise ConfigError(f'tool {name!r}: \'parameters\' must be an object schema ({{"type": "object", ...}})')
        compile_schema(parameters, f"the schema of tool {name!r}")
        if strict:
            require_strict(parameters, f"tool {name!r}")
    if response_format is not None:
        schema = _response_schema(response_format)
        compile_schema(schema, "the --response-format schema")
        if strict:
            require_strict(schema, "the --response-format schema")


def _function(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConfigError(f"a tool must look like {{'type': 'function', 'function': {{'name': ...}}}}, got {tool!r}")
    if not FUNCTION_NAME.match(function["name"]):
        raise ConfigError(
            f"tool name {function['name']!r} is not allowed: use 1-64 letters, digits, '_' or '-' (no spaces)"
        )
    return function


def _response_schema(response_format: dict[str, Any]) -> Any:
    spec = response_format.get("json_schema") if response_format.get("type") == "json_schema" else None
    if not isinstance(spec, dict):
        raise ConfigError("response_format must be {'type': 'json_schema', 'json_schema': {'name', 'schema'}}")
    return spec.get("schema") or {}


def mark_strict(
    tools: list[dict[str, Any]] | None, response_format: dict[str, Any] | None
) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """The same tools and response format with ``strict: true`` set, as they are sent."""
    if tools is not None:
        tools = [{**t, "function": {**t["function"], "strict": True}} for t in tools]
    if response_format is not None:
        response_format = {**response_format, "json_schema": {**response_format["json_schema"], "strict": True}}
    return tools, response_format


def require_strict(schema: Any, what: str) -> None:
    if problems := strict_problems(schema):
        listed = "\n  ".join(problems)
        raise ConfigError(f"--strict: {what} does not qualify for strict structured outputs:\n  {listed}")


def strict_problems(schema: Any, path: str = "$") -> list[str]:
    """Every reason ``schema`` does not qualify for strict structured outputs (empty if it does)."""
    problems: list[str] = []
    if not isinstance(schema, dict) or schema.get("type") != "object":
        problems.append(f"{path}: the root must be an object schema")
    properties = 0
    for node, at, depth in _walk(schema, path, 0):
        problems += [f"{at}: '{k}' is not supported in strict mode" for k in UNSUPPORTED if k in node]
        if depth > MAX_DEPTH:
            problems.append(f"{at}: nested {depth} levels deep; strict mode allows {MAX_DEPTH}")
        if len(node.get("enum", ())) > MAX_ENUM_VALUES:
            problems.append(f"{at}: enum has more than {MAX_ENUM_VALUES} values")
        if _is_object(node):
            props = node.get("properties") or {}
            properties += len(props)
            if node.get("additionalProperties") is not False:
                problems.append(f'{at}: needs "additionalProperties": false')
            missing = sorted(set(props) - set(node.get("required") or ()))
            if missing:
                problems.append(f"{at}: every property must be required; not required: {', '.join(missing)}")
    if properties > MAX_PROPERTIES:
        problems.append(f"{path}: {properties} properties in all; strict mode allows {MAX_PROPERTIES}")
    return problems


def _is_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node


def _walk(node: Any, path: str, depth: int) -> Iterator[tuple[dict[str, Any], str, int]]:
    if not isinstance(node, dict):
        return
    yield node, path, depth
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}", depth + 1)
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]", depth + 1)
    for keyword in ("anyOf", "oneOf"):
        for i, child in enumerate(node.get(keyword) or ()):
            yield from _walk(child, f"{path}.{keyword}[{i}]", depth)
    for name, child in (node.get("$defs") or node.get("definitions") or {}).items():
        yield from _walk(child, f"{path}.$defs.{name}", depth)


# -- Pydantic models as schemas ----------------------------------------------------------------


def is_model(value: Any) -> bool:
    """A Pydantic model class (any class with ``model_json_schema`` and ``model_validate``)."""
    return isinstance(value, type) and hasattr(value, "model_json_schema") and hasattr(value, "model_validate")


def model_tool(model: Any) -> dict[str, Any]:
    """The model as a chat tool, converted by the openai SDK (``openai.pydantic_function_tool``).

    The SDK makes the schema strict-ready: every object closed, every field required, an optional
    field nullable. So any model the SDK accepts runs with ``--strict`` (which sets ``strict`` again,
    as the SDK's own tool has it); without it, ``strict`` is left out, as for a schema file.
    """
    from openai import pydantic_function_tool  # the SDK takes a second to import: only when a model is used

    function = dict(pydantic_function_tool(model)["function"])
    function.pop("strict", None)
    return {"type": "function", "function": function}


def model_schema(model: Any) -> dict[str, Any]:
    """The model's JSON schema as the SDK sends it (strict-ready): the parameters of ``model_tool``."""
    schema: dict[str, Any] = model_tool(model)["function"]["parameters"]
    return schema


def from_models(
    tools: Any, response_format: Any
) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None, dict[str | None, Any]]:
    """Tools and a response format that may be Pydantic models -> their dicts, and the models by tool name.

    The response format's model is under ``None``.
    """
    models: dict[str | None, Any] = {}
    if tools is not None:
        converted = []
        for item in tools if isinstance(tools, list | tuple) else [tools]:
            if is_model(item):
                converted.append(model_tool(item))
                models[item.__name__] = item
            else:
                converted.append(item)
        tools = converted
    if is_model(response_format):
        models[None] = response_format
        spec = {"name": response_format.__name__, "schema": model_schema(response_format)}
        response_format = {"type": "json_schema", "json_schema": spec}
    return tools, response_format, models


def load_model(spec: str) -> Any:
    """``module:Model`` (``--tools``/``--response-format``): the Pydantic model, imported from the working directory."""
    import importlib
    import sys

    module_name, _, name = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        model = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{spec}: cannot import the model ({exc}); give module:Model, importable from here") from None
    if not is_model(model):
        raise ConfigError(f"{spec} is not a Pydantic model (a class with model_json_schema)")
    return model
