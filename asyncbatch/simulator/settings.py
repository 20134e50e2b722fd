"""What a simulated server is told: its quota, latency, faults, credentials and Batch API clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from .chaos import HOSTILE
from .charge import Charging
from .quota import Shape

FAULTS = ("500", "503", "400", "reset", "hang", "malformed", "schema", "wrong-tool", "garbage", "401-echo", *HOSTILE)
# Azure's 400s that retrying cannot fix
REFUSALS = {
    "content-filter-400": (
        "content_filter",
        "The response was filtered due to the prompt triggering the content management policy.",
    ),
    "context": (
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. Please reduce the length of the messages.",
    ),
}


@dataclass(kw_only=True)
class SimConfig:
    api_key: str = "sim-key"
    deployment: str | None = None  # None: any deployment name is served
    latency: float = 0.0  # seconds before answering
    tpm: int | None = None
    rpm: int | None = None
    window: Shape = "azure"  # or "minute": fixed wall-clock windows, 429s with no hints (see quota.py)
    window_seconds: float = 60.0  # the fixed window's length ("minute" shape)
    charging: Charging = field(default_factory=Charging)  # what a request costs against TPM
    fault_rates: dict[str, float] = field(default_factory=dict)  # fault name -> probability
    retry_after_503: float | None = None  # seconds advertised on 503s, if any
    retry_after_429: float = 1.234  # seconds a "429" fault (scripted, drawn or ``first_try``) advertises
    # the headers a 429 says its wait in: Azure's pair, or Azure SDKs' x-ms-retry-after-ms alone, or none
    retry_after_headers: tuple[str, ...] = ("retry-after-ms", "retry-after")
    first_try: str | None = None  # a fault for each distinct request's first arrival (a gateway shedding new work)
    # Budget headers that say what the server's own admissions contradict (Azure's Responses API has been
    # reported to send 0 and -1 and never refuse): every answer says this, whatever is left.
    remaining_tokens_says: str | None = None
    remaining_requests_says: str | None = None
    hang_seconds: float = 20.0
    seed: int = 0
    script: dict[str, list[str]] = field(default_factory=dict)
    outage_after: int | None = None  # after this many requests, the endpoint is down (connections dropped) ...
    outage_seconds: float = 60.0  # ... for this long
    outages: tuple[tuple[float, float], ...] = ()  # (start, seconds) after the first request: down meanwhile
    huge_bytes: int = 50 * 1024 * 1024  # the size of a "huge" answer (see chaos.py)
    slow_seconds: float = 1.0  # how long a "slow" answer takes to trickle out
    entra_only: bool = False  # key authentication off: only live bearer JWTs are accepted (see tokens.py)
    token_max_age: float | None = None  # entra_only: a token is refused this long after its first use (revoked)
    gateway_key: str | None = None  # like API Management in front: Ocp-Apim-Subscription-Key must be this
    exhaust_after: int | None = None  # after this many answers, 429 "retry after 86400 s": the day's quota is gone
    journal: bool = False  # write down every request and each success it was given (``Simulator.journal``)
    # The Batch API (see batches.py): a fast clock, lines failing server-side, bad output, jobs that expire
    batch_seconds: float = 2.0  # how long a batch job takes, from created to completed
    batch_fail_rate: float = 0.0  # share of batch lines that land in the error file (500)
    batch_bad_output_rate: float = 0.0  # share of batch lines whose output breaks the schema
    batch_expire_jobs: tuple[int, ...] = ()  # these jobs (1 = the first created) expire half done
    batch_errors_shape: str = "list"  # or "object", as the 2024-10-21 spec has errors.data
    batch_queue_tokens: int | None = None  # enqueued-token limit: a job over it fails with token_limit_exceeded
