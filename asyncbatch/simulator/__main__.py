"""python -m asyncbatch.simulator: serve the simulator on its own until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .charge import Charging
from .server import serve
from .settings import FAULTS, SimConfig


def parse_args(argv: list[str] | None = None) -> tuple[SimConfig, int]:
    p = argparse.ArgumentParser(
        prog="python -m asyncbatch.simulator",
        description="Serve a local Azure-compatible chat-completions endpoint on 127.0.0.1.",
    )
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0 picks a free one; default 8000)")
    p.add_argument("--key", default="sim-key", help="the API key it accepts (default: sim-key)")
    p.add_argument("--deployment", help="serve only this deployment name (others get 404)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    p.add_argument("--tpm", type=int, help="tokens-per-minute quota, enforced like Azure (10 s window)")
    p.add_argument("--rpm", type=int, help="requests-per-minute quota, enforced per second like Azure")
    for fault in FAULTS:
        p.add_argument(f"--fail-{fault}", type=float, default=0.0, metavar="P", help=f"probability of a {fault} fault")
    p.add_argument("--retry-after-503", type=float, help="seconds advertised in retry-after on 503s")
    p.add_argument("--retry-after-429", type=float, default=1.234, help="seconds a 429 fault asks to wait")
    p.add_argument(
        "--retry-after-headers",
        default="retry-after-ms,retry-after",
        help="the headers a 429 says its wait in, comma-separated: retry-after-ms, retry-after, x-ms-retry-after-ms "
        "(empty: none; default: retry-after-ms,retry-after)",
    )
    p.add_argument(
        "--first-try",
        choices=("429", *FAULTS),
        help="a fault for each distinct request's first arrival (429-nohint, say)",
    )
    p.add_argument("--remaining-tokens-says", metavar="V", help="every answer's x-ratelimit-remaining-tokens (0, -1)")
    p.add_argument("--remaining-requests-says", metavar="V", help="every answer's x-ratelimit-remaining-requests")
    p.add_argument("--hang-seconds", type=float, default=20.0, help="how long a hang fault hangs (default 20)")
    p.add_argument("--window", choices=("azure", "minute"), default="azure", help="quota windows (see quota.py)")
    p.add_argument("--charge-factor", type=float, default=1.0, help="times the prompt's characters / 4 it charges")
    p.add_argument("--no-tool-charge", action="store_true", help="do not count tool definitions in the charge")
    p.add_argument("--charge-per-message", type=int, default=0, help="tokens it adds to the charge per message")
    p.add_argument(
        "--charge-default-max-tokens", type=int, default=0, help="tokens it reserves for a request with no max_tokens"
    )
    p.add_argument("--outage-after", type=int, help="after this many requests, drop every connection ...")
    p.add_argument("--outage-seconds", type=float, default=60.0, help="... for this long (default 60)")
    p.add_argument("--exhaust-after", type=int, help="after this many answers, 429 with retry-after 86400")
    p.add_argument("--entra-only", action="store_true", help="accept only live bearer JWTs (key auth off)")
    p.add_argument("--gateway-key", help="require this Ocp-Apim-Subscription-Key, as API Management does")
    p.add_argument("--batch-seconds", type=float, default=2.0, help="how long a Batch API job takes (default 2)")
    p.add_argument("--batch-fail-rate", type=float, default=0.0, help="share of batch lines failing server-side")
    p.add_argument("--batch-queue-tokens", type=int, help="enqueued-token limit (token_limit_exceeded over it)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rates = {f: rate for f in FAULTS if (rate := getattr(a, "fail_" + f.replace("-", "_")))}
    return SimConfig(
        api_key=a.key,
        deployment=a.deployment,
        latency=a.latency_ms / 1000,
        tpm=a.tpm,
        rpm=a.rpm,
        fault_rates=rates,
        retry_after_503=a.retry_after_503,
        retry_after_429=a.retry_after_429,
        retry_after_headers=tuple(name for name in a.retry_after_headers.split(",") if name),
        first_try=a.first_try,
        remaining_tokens_says=a.remaining_tokens_says,
        remaining_requests_says=a.remaining_requests_says,
        hang_seconds=a.hang_seconds,
        window=a.window,
        charging=Charging(
            factor=a.charge_factor,
            count_tools=not a.no_tool_charge,
            per_message=a.charge_per_message,
            default_max_tokens=a.charge_default_max_tokens,
        ),
        outage_after=a.outage_after,
        outage_seconds=a.outage_seconds,
        exhaust_after=a.exhaust_after,
        entra_only=a.entra_only,
        gateway_key=a.gateway_key,
        batch_seconds=a.batch_seconds,
        batch_fail_rate=a.batch_fail_rate,
        batch_queue_tokens=a.batch_queue_tokens,
        seed=a.seed,
    ), a.port


async def _main(config: SimConfig, port: int) -> None:
    async with serve(config, port=port) as (url, _):
        print(
            f"simulator listening on {url}  (Azure: AZURE_OPENAI_ENDPOINT={url}; OpenAI: OPENAI_BASE_URL={url}/v1)",
            flush=True,
        )
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    config, port = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(config, port))


if __name__ == "__main__":
    main()
