"""What a run costs: a price table, the cost of tokens, and the --max-cost budget.

Prices are USD per 1M tokens. The table holds Azure OpenAI's Global Standard
list prices as published on ``PRICES_TAKEN``; the Batch API costs half
(``batch``). Contracts, regions and Data Zone deployments differ: ``--price-in``,
``--price-out`` and ``--price-cached`` override the table.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from .errors import ConfigError
from .errors import option as option_name

T = TypeVar("T")
PRICES_TAKEN = "2026-11-25"  # when the table below was copied from the Azure OpenAI pricing page


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1M tokens: prompt (input), cached prompt, and completion (output)."""

    input: float
    output: float
    cached_input: float | None = None  # None: cached tokens cost the same as other input
    source: str = "given"  # where these came from, for the summary

    def __post_init__(self) -> None:
        for name, flag in (("input", "in"), ("output", "out"), ("cached_input", "cached")):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{option_name(name, f'price-{flag}')} must be 0 or more (got {value:g})")

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        """USD for tokens as usage reports them (``prompt`` includes ``cached``)."""
        cached = min(cached, prompt)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_price + completion * self.output) / 1e6

    def batch(self) -> Prices:
        """The Batch API's prices: half of Global Standard's."""
        half = None if self.cached_input is None else self.cached_input / 2
        return Prices(self.input / 2, self.output / 2, half, f"{self.source}, Batch API (50%)")


def _p(i: float, cached: float | None, o: float) -> Prices:
    return Prices(i, o, cached, f"price table of {PRICES_TAKEN}")


# Global Standard, USD per 1M tokens: input, cached input, output.
TABLE: dict[str, Prices] = {
    "gpt-5": _p(1.25, 0.125, 10.0),
    "gpt-5-mini": _p(0.25, 0.025, 2.0),
    "gpt-5-nano": _p(0.05, 0.005, 0.40),
    "gpt-4.1": _p(2.0, 0.50, 8.0),
    "gpt-4.1-mini": _p(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _p(0.10, 0.025, 0.40),
    "gpt-4o": _p(2.50, 1.25, 10.0),
    "gpt-4o-mini": _p(0.15, 0.075, 0.60),
    "o3": _p(2.0, 0.50, 8.0),
    "o4-mini": _p(1.10, 0.275, 4.40),
    "o3-mini": _p(1.10, 0.55, 4.40),
    "text-embedding-3-small": _p(0.02, None, 0.0),
    "text-embedding-3-large": _p(0.13, None, 0.0),
    "text-embedding-ada-002": _p(0.10, None, 0.0),
}


# The most a model writes in one answer (its published output-token limit): the bound of a
# request that sets no max_tokens.
OUTPUT_LIMITS: dict[str, int] = {
    "gpt-5": 128_000,
    "gpt-5-mini": 128_000,
    "gpt-5-nano": 128_000,
    "gpt-4.1": 32_768,
    "gpt-4.1-mini": 32_768,
    "gpt-4.1-nano": 32_768,
    "gpt-4o": 16_384,
    "gpt-4o-mini": 16_384,
    "o3": 100_000,
    "o4-mini": 100_000,
    "o3-mini": 100_000,
}


def _find(table: dict[str, T], model: str) -> T | None:
    name = model.lower()
    if name in table:
        return table[name]
    matches = [key for key in table if name.startswith(key + "-")]
    return table[max(matches, key=len)] if matches else None


def lookup(model: str) -> Prices | None:
    """The table's prices for a model or deployment name: exact, else the longest name it starts with.

    ``gpt-4o-2024-08-06`` and ``gpt-4o-batch`` find ``gpt-4o``; ``gpt-4o-mini-x`` finds ``gpt-4o-mini``.
    A deployment named otherwise (``prod-chat``) finds nothing: give the prices.
    """
    return _find(TABLE, model)


def output_limit(model: str) -> int | None:
    """The most tokens ``model`` (or a deployment named after it) writes in one answer, if known."""
    return _find(OUTPUT_LIMITS, model)


def projected(spent: float, done: int, total: int) -> float:
    """The cost of ``total`` inputs at the cost per input of the ``done`` so far (the run's and the sample's)."""
    return spent / done * total if done > 0 else 0.0


def why_no_cost(model: str) -> str:
    """One line: why no cost is shown, and what to pass."""
    return (
        f"no cost: {model!r} is not in the price table (docs/usage.md 'Cost'); give --price-in and --price-out "
        "(USD per 1M tokens), or name the deployment after its model (gpt-4o-mini, ...)"
    )


def resolve(model: str, price_in: float | None, price_out: float | None, price_cached: float | None) -> Prices | None:
    """The prices to use: the table's for ``model``, with any given price overriding it.

    :raises ConfigError: some prices were given, the model is not in the table, and input or output is missing.
    """
    given = {"input": price_in, "output": price_out, "cached_input": price_cached}
    known = lookup(model)
    if known is None:
        if price_in is None and price_out is None and price_cached is None:
            return None
        if price_in is None or price_out is None:
            raise ConfigError(
                f"{model!r} is not in the price table (see docs/usage.md 'Cost'): give both --price-in and --price-out"
            )
        return Prices(price_in, price_out, price_cached)
    overrides = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(known, **overrides, source="given") if overrides else known


def decimal(value: float) -> str:
    """A number as it was typed, in decimals: 0.00005, not 5e-05 (a user checks an amount by reading it)."""
    text = format(Decimal(repr(value)).normalize(), "f") if math.isfinite(value) else repr(value)
    return text.removesuffix(".0")


class Budget:
    """--max-cost: spend so far, plus what admitted requests may still cost, never passes the limit.

    ``reserve(estimate)`` sets aside a request's estimated cost before it is sent,
    or returns None if that would pass the limit; ``settle`` replaces the
    reservation with what the answer actually cost. Estimates are scaled by how
    much answers have cost against their estimates so far, when that is more
    than 1: a server that counts more tokens than the estimate does not
    overrun the budget for long.
    """

    def __init__(self, limit: float | None) -> None:
        if limit is not None and not (math.isfinite(limit) and limit > 0):
            raise ConfigError(f"{option_name('max_cost')} must be more than 0 (got {decimal(limit)})")
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self._estimated = 0.0  # the estimates of the answers in ``spent``

    @property
    def scale(self) -> float:
        return max(1.0, self.spent / self._estimated) if self._estimated > 0 else 1.0

    def reserve(self, estimate: float) -> float | None:
        amount = estimate * self.scale
        if self.limit is not None and self.spent + self.reserved + amount > self.limit:
            return None
        self.reserved += amount
        return amount

    def reached(self) -> str:
        """Why the next request is not sent, with amounts shown to a digit finer than the limit."""
        assert self.limit is not None
        given = decimal(self.limit)
        places = max(4, len(given.partition(".")[2]) + 1)
        return (
            f"--max-cost {given} USD reached ({self.spent:.{places}f} USD spent, {self.reserved:.{places}f} USD "
            "more may be billed for requests in flight)"
        )

    def settle(self, reserved: float, estimate: float, actual: float | None) -> None:
        """``actual``: what the answer cost; None when nothing was billed (no answer, a 429, a 5xx)."""
        self.reserved = max(0.0, self.reserved - reserved)
        if actual is not None:
            self.spent += actual
            self._estimated += estimate
