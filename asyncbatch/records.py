"""The shape of every line asyncbatch writes: a result, or an error. The shared keys are defined here once.

Both follow the Batch API's output line (``id``, ``custom_id``, ``response``,
``error``) plus convenience fields; ``line`` names the input line and
``line_hash`` is a digest of its content: resuming reads them back.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from .errors import AttemptError

LINE = "line"  # the input line number, in every output line
LINE_HASH = "line_hash"  # a digest of that line's content (ids.line_digest), in hex
INVALID_INPUT = "invalid_input"  # the error code of a bad input line


def new_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def body_fragment(raw: bytes, parsed: dict[str, Any]) -> Any:
    """The server's body byte for byte, unless it holds a newline that would break JSONL."""
    if b"\n" in raw or b"\r" in raw:
        return parsed
    return orjson.Fragment(raw)


def result_record(
    *,
    custom_id: str,
    line_no: int,
    request_id: str | None,
    raw_body: bytes,
    body: dict[str, Any],
    output: Any,
    attempts: int,
    latency_ms: float,
    deployment: str | None = None,
    line_hash: str = "",
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body_fragment(raw_body, body)},
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
    if exc.status is not None:
        record["response"] = {"status_code": exc.status, "request_id": exc.request_id, "body": exc.body}
    return record
