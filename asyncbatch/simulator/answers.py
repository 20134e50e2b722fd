"""What the simulated model says: text, or tool arguments that fit the requested schema."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from .charge import prompt_tokens as count_prompt_tokens


def prompt_text(body: dict[str, Any]) -> str:
    """The last user message's text: the simulator echoes it so results can be matched to inputs."""
    given = body.get("input")
    if isinstance(given, str):
        return given
    if isinstance(given, list) and given and all(isinstance(i, str) for i in given):
        return " | ".join(given)
    for message in reversed(body.get("messages") or (given if isinstance(given, list) else [])):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def forced_function(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function a request forces through tool_choice (or its only tool with 'required')."""
    tools: list[dict[str, Any]] = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((f for f in tools if f.get("name") == name), None)
    if choice == "required" and tools:
        return tools[0]
    return None


def sample(
    schema: dict[str, Any],
    text: str,
    name: str = "value",
    root: dict[str, Any] | None = None,
    seen: frozenset[str] = frozenset(),
) -> Any:
    """A small instance of a JSON schema; string fields carry the prompt so answers are traceable.

    ``$ref`` to the root's ``$defs`` is followed (a ref elsewhere, or a loop, gives null), and of
    ``anyOf``/``oneOf`` the first branch that is not null is taken, as a model would fill it.
    """
    root = schema if root is None else root
    if isinstance(ref := schema.get("$ref"), str):
        target = (root.get("$defs") or {}).get(ref.rpartition("/")[2]) if ref.startswith("#/$defs/") else None
        return sample(target, text, name, root, seen | {ref}) if isinstance(target, dict) and ref not in seen else None
    if branches := schema.get("anyOf") or schema.get("oneOf"):
        chosen = next((b for b in branches if isinstance(b, dict) and b.get("type") != "null"), branches[0])
        return sample(chosen, text, name, root, seen) if isinstance(chosen, dict) else None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {key: sample(sub, text, key, root, seen) for key, sub in props.items()}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"}, text, name, root, seen)]
    return {"integer": 42, "number": 4.2, "boolean": True, "null": None}.get(kind, f"{name}: {text[:80]}")


def response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a json_schema response_format, if the request has one."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


def break_schema(value: Any) -> Any:
    """Valid JSON that breaks the schema: drop the first property, or give a string the wrong type."""
    if isinstance(value, dict) and value:
        return {k: v for i, (k, v) in enumerate(value.items()) if i > 0}
    return 12345 if isinstance(value, str) else "wrong type"


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """One small vector per input, a function of its text (the same text, the same vector)."""
    given = body.get("input")
    texts = given if isinstance(given, list) else [given]
    data = []
    for index, text in enumerate(texts):
        digest = hashlib.sha256(str(text).encode()).digest()
        data.append({"object": "embedding", "index": index, "embedding": [round(b / 255 - 0.5, 4) for b in digest[:8]]})
    tokens = max(1, sum(len(str(t)) for t in texts) // 4)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def response(body: dict[str, Any], *, number: int, fault: str = "ok") -> dict[str, Any]:
    """A Responses API answer: a function call with arguments that fit the forced tool, or text."""
    text = prompt_text(body)
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice")
    forced = next((t for t in tools if isinstance(choice, dict) and t.get("name") == choice.get("name")), None)
    if forced is not None:
        value = sample(forced.get("parameters") or {}, text)
        produced = orjson.dumps(break_schema(value) if fault == "schema" else value).decode()
        if fault == "malformed":
            produced = produced[: max(1, len(produced) // 2)]
        item: dict[str, Any] = {
            "type": "function_call",
            "id": f"fc_{number}",
            "call_id": f"call_{number}",
            "name": forced.get("name"),
            "arguments": produced,
            "status": "completed",
        }
    else:
        produced = f"Simulated answer to: {text}"
        content = [{"type": "output_text", "text": produced, "annotations": []}]
        item = {
            "type": "message",
            "id": f"msg_{number}",
            "role": "assistant",
            "status": "completed",
            "content": content,
        }
    usage = {"input_tokens": max(1, len(text) // 4), "output_tokens": max(1, len(produced) // 4)}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    return {
        "id": f"resp_sim_{number}",
        "object": "response",
        "status": "completed",
        "model": body.get("model"),
        "output": [item],
        "usage": usage,
    }


def completion(body: dict[str, Any], *, number: int, fault: str = "ok") -> dict[str, Any]:
    """A chat.completion for ``body``, with realistic usage.

    ``fault``: ``malformed`` (invalid JSON), ``schema`` (valid JSON breaking the schema),
    ``length`` (cut off at max_tokens), ``filtered`` (withheld by the content filter),
    ``wrong-tool`` (a model that calls a tool of its own, ``submit_result``, whatever it was offered).
    """
    text = prompt_text(body)
    function, schema = forced_function(body), response_schema(body)
    structured = function is not None or schema is not None
    if structured:
        value = sample((function.get("parameters") if function else schema) or {}, text)
        produced = orjson.dumps(break_schema(value) if fault == "schema" else value).decode()
    else:
        produced = f"Simulated answer to: {text}"
    if fault in ("malformed", "length") and structured:
        produced = produced[: max(1, len(produced) // 2)]  # cut off mid-object: invalid JSON
    message: dict[str, Any] = {"role": "assistant", "content": None if function else produced}
    finish = {"length": "length", "filtered": "content_filter"}.get(fault, "tool_calls" if function else "stop")
    if fault == "filtered":
        message["content"], produced = None, ""
    elif function is not None:
        call = {
            "id": f"call_{number}",
            "type": "function",
            "function": {
                "name": "submit_result" if fault == "wrong-tool" else function.get("name"),
                "arguments": produced,
            },
        }
        message["tool_calls"] = [call]
    prompt_tokens = count_prompt_tokens(body)
    completion_tokens = max(1, len(produced) // 4)
    cap = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(cap, int) and cap > 0:
        completion_tokens = min(completion_tokens, cap)  # Azure never bills past max_tokens
    return {
        "id": f"chatcmpl-sim-{number}",
        "object": "chat.completion",
        "created": 1_700_000_000 + number,
        "model": body.get("model", "simulated"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
