"""The shape of every line asyncbatch writes: a result, or an error. The shared keys are defined here once.

Both follow the Batch API's output line (``id``, ``custom_id``, ``response``,
``error``) plus convenience fields; ``line`` names the input line and
``line_hash`` is a digest of its content: resuming reads them back.

Building a record never raises, and ``encode`` never does either: a record the encoder
refuses becomes ``unrecordable``'s error line, which always encodes.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from .errors import AttemptError
from .protocol import clean_usage

LINE = "line"  # the input line number, in every output line
LINE_HASH = "line_hash"  # a digest of that line's content (ids.line_digest), in hex
INVALID_INPUT = "invalid_input"  # the error code of a bad input line


def new_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def body_fragment(raw: bytes) -> orjson.Fragment:
    """The server's body, checked JSON (``protocol.read_json``), as it came: byte for byte, but for line breaks.

    A JSON text holds CR and LF only as whitespace between tokens (inside a string they must be
    escaped), so they become spaces: the same JSON, on one line, never encoded again.
    """
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    return orjson.Fragment(raw)


def result_record(
    *,
    custom_id: str,
    line_no: int,
    request_id: str | None,
    raw_body: bytes,
    output: Any,
    attempts: int,
    latency_ms: float,
    deployment: str | None = None,
    line_hash: str = "",
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body_fragment(raw_body)},
        "error": None,
        "output": output,
        "attempts": attempts,
        "latency_ms": round(latency_ms, 1),
        "deployment": deployment,
        LINE: line_no,
        LINE_HASH: line_hash,
    }


def error_record(
    *, custom_id: str, line_no: int, code: str, message: str, attempts: int, line_hash: str = ""
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
        "attempts": attempts,
        LINE: line_no,
        LINE_HASH: line_hash,
    }


def failure_record(
    *,
    custom_id: str,
    line_no: int,
    exc: AttemptError,
    attempts: int,
    deployment: str | None = None,
    line_hash: str = "",
) -> dict[str, Any]:
    record = error_record(
        custom_id=custom_id, line_no=line_no, code=exc.code, message=exc.message, attempts=attempts, line_hash=line_hash
    )
    record["deployment"] = deployment
    if exc.status is not None or exc.request_id is not None:  # an answer came, if only its head: name it
        record["response"] = {"status_code": exc.status, "request_id": exc.request_id, "body": exc.body}
    return record


UNRECORDABLE = "unrecordable"  # the error code of a record the encoder refused
MESSAGE_CHARS = 1000


def encode(record: dict[str, Any]) -> bytes | None:
    """``record`` as one JSONL line, or None if the encoder refuses it (nesting past 254 levels, say)."""
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None


def unrecordable(record: dict[str, Any], why: str = "the encoder refused it") -> dict[str, Any]:
    """The error line for a record that cannot be written: its line, ids, request id and usage, always encodable.

    The response is kept when it encodes on its own (a result's body is the server's bytes, bounded by
    ``--max-response-mb``); otherwise only its status, request id and token counts.
    """
    response = record.get("response")
    if not isinstance(response, dict) or encode(response) is None:
        response = _bare(response)
    text = f"this line's record could not be written ({why}); HINT: run again with --retry-failed to ask again"
    return {
        "id": new_id(),
        "custom_id": _text(record.get("custom_id")),
        "response": response,
        "error": {"code": UNRECORDABLE, "message": _text(text)},
        "attempts": record.get("attempts") if type(record.get("attempts")) is int else 0,
        LINE: record.get(LINE) if type(record.get(LINE)) is int else 0,
        LINE_HASH: _text(record.get(LINE_HASH)),
    }


def _bare(response: Any) -> dict[str, Any] | None:
    if not isinstance(response, dict):
        return None
    status, request_id = response.get("status_code"), response.get("request_id")
    usage = clean_usage(response.get("body"))
    return {
        "status_code": status if type(status) is int else None,
        "request_id": _text(request_id) if isinstance(request_id, str) else None,
        "body": {"usage": usage} if usage else None,
    }


def _text(value: Any) -> str:
    """Text that always encodes: a string (lone surrogates replaced), bounded."""
    text = value if isinstance(value, str) else ""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."
