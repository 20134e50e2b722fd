"""What the simulated server charges a request against its TPM quota when it arrives.

Written from Azure's documentation, not from the client: the charge is "based
in part on the character count" of the prompt (text and count), plus
``max_tokens`` times ``best_of``. The divisor of 4 characters a token is the
common reading. What else counts is not documented, and gateways count their
own way, so the structure is an option: ``factor`` scales the prompt part only,
``per_message`` adds a fixed overhead per message, ``count_tools`` says whether
tool definitions are prompt text, and ``default_max_tokens`` is what a request
without a ``max_tokens`` reserves. A test can make the server disagree with any
client estimate in its structure, not only by one factor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Charging:
    factor: float = 1.0  # times the prompt's characters / 4 (the completion reserve is not scaled)
    count_tools: bool = True  # tool definitions count as prompt text
    per_message: int = 0  # tokens added per message (chat messages, or Responses input items)
    default_max_tokens: int = 0  # reserved for a request that sets no max_tokens


def messages(body: dict[str, Any]) -> int:
    given = body.get("messages")
    if given is None and isinstance(body.get("input"), list):
        given = [m for m in body["input"] if isinstance(m, dict)]
    return len(given) if isinstance(given, list) else 0


def prompt_chars(body: dict[str, Any], count_tools: bool = True) -> int:
    chars = 0
    given = body.get("input")  # embeddings and the Responses API: a string, strings, or messages
    if isinstance(given, str):
        chars += len(given)
    elif isinstance(given, list):
        chars += sum(len(i) for i in given if isinstance(i, str))
    for message in body.get("messages") or (given if isinstance(given, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    if count_tools and body.get("tools"):
        chars += len(json.dumps(body["tools"], separators=(",", ":"), ensure_ascii=False))
    return chars


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt's token count as the simulator reports it in ``usage``."""
    return math.ceil(prompt_chars(body) / 4)


def charge(body: dict[str, Any], charging: Charging) -> int:
    """Tokens charged on arrival: the prompt estimate (scaled), per-message overhead, plus max_tokens x best_of."""
    prompt = math.ceil(prompt_chars(body, charging.count_tools) / 4 * charging.factor)
    prompt += charging.per_message * messages(body)
    most_out = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    best_of = body.get("best_of") or 1
    return prompt + int(most_out or charging.default_max_tokens) * int(best_of)
