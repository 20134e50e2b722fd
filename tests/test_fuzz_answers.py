"""Generated answers at the HTTP boundary (``tests/fuzz/answers.py``): a quick sample, and every shrunk failure.

``python benchmarks/bench_fuzz.py --only answers`` runs thousands of cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.answers import Reply, Trial, fuzz, play

# Every trial the fuzzer shrank a failure to, kept: each must now keep every invariant.
KEPT = [
    # A raw-deflate answer cut short, on the last attempt: aiohttp's own decoder failed inside its parser,
    # before the status and headers reached the client, so the paid answer was recorded without its request id.
    Trial(
        tools=True,
        cases=(
            (
                Reply(body="text", length="none"),
                Reply(status=503, body="text", encoding="gzip", length="long"),
                Reply(depth=1100, encoding="raw-deflate", length="short", cut=True, secret=0),
            ),
        ),
    ),
    # Bytes past the Content-Length, with the answer: aiohttp refuses the whole message, head included (no
    # HTTP answer, so no request id to record); the scripted server no longer counts it as a paid answer.
    Trial(
        tools=False,
        cases=(
            (
                Reply(status=503, body="huge", size=1048000, encoding="gzip", length="none", cut=True),
                Reply(body="utf8", encoding="raw-deflate", length="short", cut=True),
                Reply(body="args-bad", encoding="gzip", length="short", secret=0),
            ),
        ),
    ),
    # Two calls that differ: the first was recorded, the second dropped unchecked. An integer past 64 bits:
    # recorded rounded ({'label': 1.9426e+23} where the model said 194260000000000000000000).
    Trial(tools=True, cases=((Reply(body="calls"),), (Reply(body="bigint", seed=19424),), (Reply(body="calls"),) * 3)),
]


@pytest.mark.parametrize("trial", KEPT, ids=lambda t: f"{len(t.cases)}-cases")
def test_every_trial_that_once_broke_an_invariant_keeps_them_all(tmp_path: Path, trial: Trial) -> None:
    checked = play(trial, tmp_path)
    assert checked.ok, checked.problems


def test_a_sample_of_generated_answers_keeps_every_invariant() -> None:
    report = fuzz(30, seed=7)
    assert report.cases == 30 and report.ok, report.violations
    assert set(report.checked) >= {"every paid answer recorded", "every input exactly once", "no secret"}


def test_a_key_planted_in_answers_is_masked_where_they_quote_it(tmp_path: Path) -> None:
    planted = Trial(tools=False, cases=((Reply(secret=0),), (Reply(status=400, body="error", secret=0),)))
    checked = play(planted, tmp_path)
    assert checked.ok, checked.problems
    assert '"answer ***"' in (tmp_path / "in.results.jsonl").read_text()
    assert "simulated 400 ***" in (tmp_path / "in.results.errors.jsonl").read_text()
