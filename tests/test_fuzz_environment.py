"""The environment boundary, fuzzed: a quick sample of generated variables, files and options, and every
shrunk failure the fuzzing found, kept (``tests/fuzz/environment.py``; thousands: benchmarks/bench_fuzz.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.environment import Case, check, fuzz
from tests.fuzz.report import FuzzReport


def test_a_quick_sample_of_generated_configurations_keeps_every_invariant() -> None:
    report = fuzz(120, seed_value=34)
    assert report.ok, report.violations
    assert report.cases == 120
    assert report.checked["usable"] > 10 and report.checked["message"] > 10  # both outcomes were reached


SHRUNK = {  # each was a traceback, a leak or a crash at the first request before it was fixed
    "an empty -o: a directory's name, no file": Case(
        ["in.jsonl", "--auth", "key", "-o="],
        {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "AZURE_OPENAI_API_KEY": "Zq700000000"},
        planted=["Zq700000000"],
    ),
    "an unclosed IPv6 bracket": Case(
        ["in.jsonl", "--auth", "key"], {"AZURE_OPENAI_ENDPOINT": "https://[", "AZURE_OPENAI_API_KEY": "k" * 8}
    ),
    "a password before a host, without a scheme": Case(
        ["in.jsonl", "--auth", "key"],
        {"AZURE_OPENAI_ENDPOINT": "Zq700000000@127.0.0.1", "AZURE_OPENAI_API_KEY": "k" * 8},
        planted=["Zq700000000"],
    ),
    "a password in the URL of a server that takes the key as a bearer token": Case(
        ["in.jsonl"],
        {"OPENAI_API_KEY": "Zq7key00000", "OPENAI_BASE_URL": "http://admin:Zq7pass0000@h:1/v1", "OPENAI_MODEL": "m"},
        planted=["Zq7key00000", "Zq7pass0000"],
    ),
}


@pytest.mark.parametrize("name", sorted(SHRUNK))
def test_each_shrunk_case_is_refused_cleanly(tmp_path: Path, name: str) -> None:
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}\n')
    report = FuzzReport("environment")
    assert check(SHRUNK[name], tmp_path, report) == []
    assert report.checked.get("message") == 1  # refused, with a message
