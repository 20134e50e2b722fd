"""Promises under chaos: every hostile answer, header value and input line the catalogue knows, through the CLI.

The property test at the bottom draws whole schedules of server behaviour and kill -9
points (hypothesis) and checks the shared invariants (``simulator/invariants.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.protocol import answer_problem, int_header, parse_retry_after
from asyncbatch.simulator import SimConfig
from asyncbatch.simulator.answers import completion, embeddings, response
from asyncbatch.simulator.chaos import ABSURD_VALUES, CHAT_SHAPES, EMBEDDING_SHAPES, RAW_SHAPES, RESPONSES_SHAPES
from asyncbatch.simulator.invariants import FAULT_MENU, KEY, RESPONSES_ARGS, Schedule, play, run_cli, violations
from asyncbatch.simulator.server import serve_in_thread

from .helpers import read_jsonl, simulator_env, write_jsonl

CHAT_REQUEST = {"messages": [{"role": "user", "content": "hi"}]}
EMBED_REQUEST = {"input": ["a", "b"]}
RESPONSES_REQUEST = {"input": "hi"}
RESPONSES_VERSION = RESPONSES_ARGS[1]  # the first classic api-version with a /responses route


def _line(i: int, api: str, content: str) -> dict[str, object]:
    body: dict[str, object] = {"messages": [{"role": "user", "content": content}]} if api == "chat" else {}
    if api == "embeddings":
        body = {"input": [content, f"{content} again"]}
    if api == "responses":
        body = {"input": content}
    url = "/chat/completions" if api == "chat" else f"/{api}"
    return {"custom_id": f"r{i}", "method": "POST", "url": url, "body": {"model": "m", **body}}


@pytest.mark.parametrize("value", ABSURD_VALUES)
def test_every_absurd_header_value_parses_to_a_bounded_number_or_nothing(value: str) -> None:
    for headers in ({"retry-after": value}, {"retry-after-ms": value}):
        wait = parse_retry_after(headers)
        assert wait is None or (math.isfinite(wait) and wait >= 0)
    left = int_header({"x-ratelimit-remaining-tokens": value}, "x-ratelimit-remaining-tokens")
    assert left is None or 0 <= left <= 10**12


@pytest.mark.parametrize(
    ("api", "valid", "request_body", "shapes"),
    [
        ("chat", completion(CHAT_REQUEST, number=1), CHAT_REQUEST, CHAT_SHAPES),
        ("embeddings", embeddings(EMBED_REQUEST), EMBED_REQUEST, EMBEDDING_SHAPES),
    ],
)
def test_the_decoder_tells_every_broken_shape_from_a_valid_answer(
    api: str, valid: dict[str, object], request_body: dict[str, object], shapes: dict[str, object]
) -> None:
    assert answer_problem(api, valid, request_body) is None
    for name, shape in shapes.items():
        assert callable(shape)
        assert answer_problem(api, shape(valid), request_body), name


def test_responses_shapes_that_are_not_answers_are_told_apart() -> None:
    valid = response(RESPONSES_REQUEST, number=1)
    assert answer_problem("responses", valid, RESPONSES_REQUEST) is None
    for name in ("response-output-null", "response-content-string", "response-status-number"):
        assert answer_problem("responses", RESPONSES_SHAPES[name](valid), RESPONSES_REQUEST), name


@pytest.mark.parametrize("api", ["chat", "embeddings", "responses"])
def test_each_broken_answer_is_asked_again_and_every_line_lands_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    """Line i's first answer is shape i of the catalogue (raw bodies too); the retry is a good answer."""
    shapes = {"chat": CHAT_SHAPES, "embeddings": EMBEDDING_SHAPES, "responses": {}}[api]
    names = [*shapes, *RAW_SHAPES]
    if api == "responses":
        names = ["response-output-null", "response-content-string", "response-status-number", *RAW_SHAPES]
    prompts = [f"p{i}" for i in range(len(names))]
    scripted = prompts if api != "embeddings" else [f"{p} | {p} again" for p in prompts]
    script = {text: [f"shape:{name}"] for text, name in zip(scripted, names, strict=True)}
    with simulator_env(SimConfig(api_key=KEY, script=script), monkeypatch):
        write_jsonl(tmp_path / "in.jsonl", [_line(i, api, p) for i, p in enumerate(prompts)])
        assert main(["in.jsonl", "-q", "--backoff", "0", "--api-version", RESPONSES_VERSION]) == 0
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert sorted(r["line"] for r in results) == list(range(1, len(names) + 1))
    assert all(r["attempts"] == 2 for r in results)  # the broken answer was not taken for an answer
    if api == "embeddings":
        assert all(len(r["output"]) == 2 for r in results)


def test_not_successes_are_recorded_with_their_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Responses statuses, a chunk and mismatched embeddings every time: each line fails with its own code."""
    cases = {
        "response-failed": ("responses", "response_failed"),
        "response-incomplete-tokens": ("responses", "output_truncated"),
        "response-incomplete-filter": ("responses", "content_filter"),
        "response-cancelled": ("responses", "response_cancelled"),
        "response-queued": ("responses", "response_not_finished"),
        "response-in-progress": ("responses", "response_not_finished"),
        "response-error-set": ("responses", "response_failed"),
        "chunk": ("chat", "malformed_response"),
        "embeddings-fewer": ("embeddings", "malformed_response"),
        "embeddings-more": ("embeddings", "malformed_response"),
    }
    lines, script = [], {}
    for i, (shape, (api, _)) in enumerate(cases.items()):
        lines.append(_line(i, api, f"p{i}"))
        script[f"p{i}" if api != "embeddings" else f"p{i} | p{i} again"] = [f"shape:{shape}"] * 3
    stream = _line(len(lines), "chat", "streamed")
    stream["body"]["stream"] = True  # type: ignore[index]
    with simulator_env(SimConfig(api_key=KEY, script=script), monkeypatch) as (_, simulator):
        write_jsonl(tmp_path / "in.jsonl", [*lines, stream])
        assert (
            main(["in.jsonl", "-q", "--backoff", "0", "--max-attempts", "3", "--api-version", RESPONSES_VERSION]) == 1
        )
        assert "streamed" not in {str(b.get("messages")) for b in simulator.bodies}  # never sent, never paid
    errors = {e["custom_id"]: e["error"] for e in read_jsonl(tmp_path / "in.results.errors.jsonl")}
    for i, (_, code) in enumerate(cases.values()):
        assert errors[f"r{i}"]["code"] == code, (i, errors[f"r{i}"])
    assert errors[f"r{len(lines)}"]["code"] == "invalid_input" and "stream" in errors[f"r{len(lines)}"]["message"]


def test_a_line_nested_too_deep_to_serialise_is_one_invalid_input_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = (
        '{"custom_id": "deep", "messages": [{"role": "user", "content": "x", "extra": ' + "[" * 300 + "]" * 300 + "}]}"
    )
    with simulator_env(SimConfig(api_key=KEY), monkeypatch):
        write_jsonl(tmp_path / "in.jsonl", [_line(0, "chat", "a"), deep, _line(2, "chat", "b")])
        assert main(["in.jsonl", "-q"]) == 1
        assert main(["in.jsonl", "-q"]) == 1  # a resume does not crash on it either
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == ["r0", "r2"]
    (bad,) = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert bad["error"]["code"] == "invalid_input" and "in.jsonl:2:" in bad["error"]["message"]


def test_503s_before_the_first_success_are_ridden_out_not_called_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first 20 prompts answer 503 first: the breaker opens, but a 5xx is an answer, so the run goes on."""
    script = {f"p{i}": ["503"] for i in range(20)}
    with simulator_env(SimConfig(api_key=KEY, script=script, fault_rates={"503": 0.3}), monkeypatch) as (_, sim):
        write_jsonl(tmp_path / "in.jsonl", [_line(i, "chat", f"p{i}") for i in range(200)])
        assert main(["in.jsonl", "-q", "-c", "20", "--backoff", "0.01", "--max-attempts", "8"]) == 0
    assert sorted(r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == list(range(1, 201))
    assert sim.billed_twice() == 0 and sim.statuses["503"] >= 20


def test_a_503_asking_for_a_billion_seconds_stops_resumably_and_names_the_wait(tmp_path: Path) -> None:
    config = SimConfig(api_key=KEY, script={"p3": ["503"]}, retry_after_503=1e9)
    with serve_in_thread(config) as (url, _):
        write_jsonl(tmp_path / "in.jsonl", [_line(i, "chat", f"p{i}") for i in range(10)])
        env = {**os.environ, "AZURE_OPENAI_ENDPOINT": url, "AZURE_OPENAI_API_KEY": KEY}
        env["AZURE_OPENAI_DEPLOYMENT_NAME"] = "dep"
        run = run_cli(["in.jsonl", "--max-wait", "10", "--max-outage", "10", "-c", "1"], tmp_path, env, bound=15)
    assert not run.timed_out and run.code == 75, run.stderr
    assert "answered HTTP 503 asking to wait: a wait of 1,000,000,000 s, longer than --max-wait" in run.stderr


def test_answers_of_50_mb_are_not_read_and_memory_stays_bounded(tmp_path: Path) -> None:
    config = SimConfig(api_key=KEY, fault_rates={"huge": 1.0}, huge_bytes=50 * 1024 * 1024)
    with serve_in_thread(config) as (url, _):
        write_jsonl(tmp_path / "in.jsonl", [_line(i, "chat", f"p{i}") for i in range(40)])
        env = {**os.environ, "AZURE_OPENAI_ENDPOINT": url, "AZURE_OPENAI_API_KEY": KEY}
        env["AZURE_OPENAI_DEPLOYMENT_NAME"] = "dep"
        run = run_cli(["in.jsonl", "--no-progress", "-c", "20"], tmp_path, env, bound=120)
    assert run.code == 1, run.stderr
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert len(errors) == 40 and {e["error"]["code"] for e in errors} == {"response_too_large"}
    assert "--max-response-mb" in errors[0]["error"]["message"]
    assert run.peak_rss_mb < 500


def test_a_run_s_peak_memory_is_its_own_not_its_large_parent_s(tmp_path: Path) -> None:
    """Regression: a CLI forked from a pytest worker that had run Ray or Spark reported that worker's 476 MB."""
    ballast = b"x" * (600 << 20)  # resident: this process is now larger than any bound the checks use
    run = run_cli(["--version"], tmp_path, dict(os.environ), bound=60)
    assert run.code == 0 and run.stdout.startswith("asyncbatch"), run.stderr
    assert run.peak_rss_mb < 300 < len(ballast) >> 20


def test_kill_9_reaches_the_run_itself(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("")
    env = {**os.environ, "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_API_KEY": KEY}
    run = run_cli(["--simulate", "--sim-latency-ms", "60000", "in.jsonl"], tmp_path, env, bound=60, kill_after=0.01)
    assert run.killed and not run.timed_out and run.code is None


def test_the_checker_catches_what_it_is_for(tmp_path: Path) -> None:
    """The invariants can fail: a doubled line, a lost line, a torn line, a planted secret, a traceback, a paid
    answer in no output."""
    (tmp_path / "in.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    (tmp_path / "r.jsonl").write_text(json.dumps({"line": 1}) + "\n" + json.dumps({"line": 1}) + '\n{"li')
    (tmp_path / "e.jsonl").write_text(json.dumps({"line": 2, "note": KEY}) + "\n")
    from asyncbatch.simulator.invariants import Run
    from asyncbatch.simulator.server import Asked

    runs = [Run(code=2, seconds=1, peak_rss_mb=900, stdout="", stderr="Traceback (most recent call last)")]
    found = violations(
        runs,
        input_path=tmp_path / "in.jsonl",
        results_path=tmp_path / "r.jsonl",
        errors_path=tmp_path / "e.jsonl",
        secrets=[KEY],
        max_rss_mb=400,
        journal=[Asked(1.0, "p1", "req-lost")],
    )
    for words in ("exit 2", "Traceback", "900 MB", "not a whole record", "nowhere", "more than once", "secret"):
        assert any(words in f for f in found), words
    assert any("req-lost" in f and "in no output" in f for f in found)


def test_a_paid_answer_is_excused_only_when_asked_again_in_its_run_or_killed(tmp_path: Path) -> None:
    from asyncbatch.simulator.invariants import Run, paid_answers_lost
    from asyncbatch.simulator.server import Asked

    first = Run(code=None, seconds=1, peak_rss_mb=1, stdout="", stderr="", killed=True, started=0, ended=10)
    second = Run(code=1, seconds=1, peak_rss_mb=1, stdout="", stderr="", started=20, ended=30)
    journal = [
        Asked(5, "a", "in-a-killed-run"),  # lost to kill -9: the resume pays again, by design
        Asked(21, "b", "asked-again"),  # malformed or invalid: the same input asked again in this run
        Asked(22, "b"),
        Asked(23, "c", "recorded"),
        Asked(24, "d", "lost"),  # the only one that breaks the promise ...
        Asked(25, "e", "lost-then-asked-in-a-later-run"),  # ... and this one: a resume paid it again
    ]
    resumed = Run(code=0, seconds=1, peak_rss_mb=1, stdout="", stderr="", started=40, ended=50)
    found = paid_answers_lost([*journal, Asked(41, "e")], [first, second, resumed], {"recorded"})
    assert len(found) == 1 and "2 answers" in found[0] and "lost" in found[0] and "asked-again" not in found[0]


def test_a_broken_answer_whose_asking_again_a_stop_cut_short_is_excused_when_the_resume_asks_again() -> None:
    """The server knows when it served a fault (malformed, off its schema, of the wrong shape): the client
    asks again, and a stop (exit 75 or 130) may come first; the resume asks then. A sound answer never is."""
    from asyncbatch.simulator.invariants import Run, paid_answers_lost
    from asyncbatch.simulator.server import Asked

    stopped = Run(code=75, seconds=1, peak_rss_mb=1, stdout="", stderr="", started=0, ended=10)
    resumed = Run(code=0, seconds=1, peak_rss_mb=1, stdout="", stderr="", started=20, ended=30)
    journal = [
        Asked(1, "a", "broken-asked-by-the-resume", broken=True),
        Asked(2, "b", "sound-asked-by-the-resume"),  # paid twice: lost
        Asked(3, "c", "broken-never-asked-again", broken=True),  # lost
        Asked(21, "a"),
        Asked(22, "b"),
    ]
    found = paid_answers_lost(journal, [stopped, resumed], set())
    assert len(found) == 1 and "2 answers" in found[0] and "broken-asked" not in found[0]
    finished = Run(code=1, seconds=1, peak_rss_mb=1, stdout="", stderr="", started=0, ended=10)  # not a stop
    assert "3 answers" in paid_answers_lost(journal, [finished, resumed], set())[0]


# -- the property: random schedules of server behaviour and kill points --------------------------

faults = st.dictionaries(st.sampled_from(FAULT_MENU), st.floats(0.01, 0.15), min_size=1, max_size=5)
ON_RESPONSES = RESPONSES_ARGS


def _routed(schedule: Schedule) -> Schedule:
    return dataclasses.replace(schedule, args=ON_RESPONSES) if schedule.api == "responses" else schedule


schedules = st.builds(
    Schedule,
    seed=st.integers(0, 1000),
    faults=faults,
    api=st.sampled_from(["chat", "embeddings", "responses"]),
    lines=st.integers(20, 60),
    outage=st.none() | st.tuples(st.floats(0, 1.5), st.floats(0.3, 3)),
    window=st.sampled_from(["azure", "azure", "minute"]),
    tpm=st.sampled_from([None, 30_000]),
    pool=st.booleans(),
    dies_after=st.none() | st.floats(0.2, 1.5),
    kill_after=st.none() | st.floats(0.4, 2.5),
).map(_routed)


# Every shrunk failure the property found, kept: each its own test, so they run side by side.
KEPT = [
    Schedule(
        faults={"garbage": 0.1, "503-absurd": 0.1},
        api="responses",
        outage=(0.0, 2.7),
        kill_after=2.0,
        args=ON_RESPONSES,
    ),
    Schedule(faults={"shape": 0.1, "echo-key": 0.06}, outage=(0.6, 3.4), tpm=30_000, kill_after=1.0),
    Schedule(faults={"500": 0.1}, pool=True, dies_after=0.5, lines=60),
    # a retry avoiding the live route waited for the dead one, and held every attempt behind it
    Schedule(
        seed=418302485,
        faults={"headers": 0.013, "429-nohint": 0.099, "echo-key": 0.076, "reset": 0.079, "shape": 0.099},
        api="responses",
        lines=113,
        outage=(0.56, 3.28),
        pool=True,
        dies_after=1.92,
        args=ON_RESPONSES,
    ),
    # answers of the wrong shape, their asking again cut short by a 429 asking for 86 s: the resume asks
    Schedule(seed=1, faults={"shape": 0.125, "429-absurd": 0.125}, lines=20),
    # a pool: one member's quota exhausted for a million seconds, the other dead: exit 75, not 2
    Schedule(
        seed=215,
        faults={"500": 0.105, "503": 0.125, "reset": 0.075, "429-absurd": 0.125},
        lines=34,
        pool=True,
        dies_after=1.0,
    ),
]


@pytest.mark.parametrize("schedule", KEPT, ids=lambda s: f"seed{s.seed}-{'-'.join(s.faults)}")
def test_every_schedule_that_once_broke_an_invariant_keeps_them_all(tmp_path: Path, schedule: Schedule) -> None:
    found, _ = play(schedule, tmp_path)
    assert not found, f"{schedule}: {found}"


@settings(
    max_examples=int(os.environ.get("ASYNCBATCH_CHAOS_EXAMPLES", "3")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=schedules)
def test_no_schedule_of_server_behaviour_breaks_an_invariant(
    tmp_path_factory: pytest.TempPathFactory, schedule: Schedule
) -> None:
    """A failure found here shrinks to a schedule: add it to ``KEPT``."""
    found, _ = play(schedule, tmp_path_factory.mktemp("chaos"))
    assert not found, f"{schedule}: {found}"


def test_every_fault_is_an_option_of_the_simulator_command() -> None:
    from asyncbatch.simulator import FAULTS
    from asyncbatch.simulator.__main__ import parse_args

    config, _ = parse_args([arg for f in FAULTS for arg in (f"--fail-{f}", "0.01")])
    assert config.fault_rates == dict.fromkeys(FAULTS, 0.01)
