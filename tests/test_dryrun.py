from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.dryrun import dry_run, implied_seconds, pick_sample
from asyncbatch.cli.main import main
from asyncbatch.config import Limits, RequestDefaults
from tests.helpers import batch_line, write_jsonl


def test_dry_run_counts_formats_tokens_and_bad_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            batch_line("a", "x" * 400, max_tokens=10),
            {"custom_id": "b", "messages": [{"role": "user", "content": "y" * 40}], "n": 2, "max_tokens": 5},
            {"id": 3, "name": "Zed"},
            {"id": 4},  # the template needs {name}
            "not json",
        ],
    )
    report = dry_run(path, RequestDefaults(template="Hi {name}", max_tokens=7), "m")
    assert report.lines == 5 and report.requests == 3 and report.bad_count == 2
    assert dict(report.kinds) == {"batch": 1, "chat": 1, "record": 1}
    assert report.prompt_tokens == 100 + 10 + 2  # "Hi Zed" is 6 characters: ceil(6/4)
    assert report.completion_tokens == 10 + 5 * 2 + 7
    assert [b.line_no for b in report.bad] == [4, 5]


def test_implied_time_takes_the_binding_quota() -> None:
    from asyncbatch.cli.dryrun import DryRunReport

    report = DryRunReport(lines=1200, prompt_tokens=500_000, completion_tokens=100_000)
    # TPM 600k: the first 100k go in the 10 s burst, the other 500k at 10k/s = 50 s; RPM 600: 1200 / 10/s = 120 s
    assert implied_seconds(report, Limits(tpm=600_000)) == pytest.approx(50.0)
    assert implied_seconds(report, Limits(tpm=600_000, rpm=600)) == pytest.approx(120.0)
    assert implied_seconds(report, Limits()) is None


def test_dry_run_cli_needs_no_credentials_sends_nothing_and_prices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "t": "z" * 396} for i in range(1000)])
    code = main(
        [str(path), "--dry-run", "--template", "{t}", "--max-tokens", "100", "--price-in", "2", "--price-out", "8"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "requests         1,000" in out
    assert "prompt tokens    99,000 estimated" in out and "output tokens    100,000 at most (max_tokens x n)" in out
    assert "at most 0.9980 USD live" in out  # 0.099M x 2 + 0.1M x 8 = 0.198 + 0.8
    assert not (tmp_path / "in.results.jsonl").exists()


def test_a_dry_run_with_no_deployment_named_says_which_variable_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    assert main(["in.jsonl", "--dry-run", "--tpm", "1200000", "--rpm", "7200"]) == 0  # the README's first command
    out = capsys.readouterr().out
    assert "no cost: 'no deployment named: set AZURE_OPENAI_DEPLOYMENT_NAME or --deployment'" in out
    assert "dry-run" not in out  # no model of that name


def test_dry_run_with_bad_lines_exits_1_and_names_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x"), "{", batch_line("a", "dup")])
    assert main([str(path), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "in.jsonl:2: not valid JSON" in out and "in.jsonl:3: duplicate custom_id 'a'" in out


@settings(max_examples=60, deadline=None)
@given(
    lines=st.integers(1, 120),
    wanted=st.integers(1, 120),
    bad=st.sets(st.integers(1, 120), max_size=10),
    blank=st.sets(st.integers(1, 120), max_size=10),
)
@example(lines=3, wanted=2, bad={3}, blank=set())  # a bad last line took the last pick with it: 1 line sent of 2
@example(lines=10, wanted=5, bad=set(), blank={1, 2, 3, 4, 5, 6, 7, 8, 9})  # blank lines bunched the picks at the end
def test_a_sample_takes_as_many_lines_as_asked_spread_over_the_file(
    tmp_path_factory: pytest.TempPathFactory, lines: int, wanted: int, bad: set[int], blank: set[int]
) -> None:
    rows = ["not json" if i in bad else {"id": i, "name": f"n{i}"} for i in range(1, lines + 1)]
    path = write_jsonl(tmp_path_factory.mktemp("s") / "in.jsonl", rows)
    path.write_bytes(
        b"".join(b"\n" * (i in blank) + raw for i, raw in enumerate(path.read_bytes().splitlines(True), 1))
    )
    defaults = RequestDefaults(template="Hi {name}")
    report = dry_run(path, defaults, "m")
    picked = [orjson.loads(raw)["id"] for raw in pick_sample(path, report, wanted, defaults, "m")]
    good = [i for i in range(1, lines + 1) if i not in bad]
    assert picked == sorted(set(picked)) and not set(picked) & bad
    assert len(picked) == min(wanted, len(good))  # as many as asked, or every good line
    assert not good or picked[0] == good[0]
    if wanted >= 2 and len(picked) == wanted:  # spread: the last pick is in the good lines' last step
        assert good.index(picked[-1]) > len(good) - len(good) / wanted - 1


def test_dry_run_sample_sends_as_many_lines_as_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "name": f"n{i}"} for i in range(24)])
    simulate = ["--simulate", "--sim-latency-ms", "5", "--template", "Hi {name}", "--deployment", "gpt-4o-mini"]
    assert main([str(path), "--dry-run", "--sample", "20", *simulate]) == 0
    assert ": 20 sent" in capsys.readouterr().out


def test_the_dry_runs_batch_plan_leaves_embeddings_live_on_azure_and_batches_them_for_openai(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"custom_id": f"e{i}", "method": "POST", "url": "/embeddings", "body": {"input": "t"}} for i in range(3)]
    path = write_jsonl(tmp_path / "in.jsonl", [*rows, batch_line("c", "hi", max_tokens=5)])
    assert main([str(path), "--dry-run", "--batch-api"]) == 0
    out = capsys.readouterr().out
    assert "1 file(s) and job(s) (1 chat)" in out and "3 embeddings lines run live" in out
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert main([str(path), "--dry-run", "--batch-api"]) == 0
    out = capsys.readouterr().out
    assert "2 file(s) and job(s) (1 chat, 1 embeddings)" in out and "run live" not in out
