"""--batch-api against the simulator's Batch API: jobs, kill -9 and resume, failures run live, cancel."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from openai import BadRequestError, OpenAI

from asyncbatch.batch.parts import BatchState, Splitter
from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread

from .helpers import read_jsonl, simulator_env, write_jsonl

KEY = "batch-key"
TOOLS = Path(__file__).parents[1] / "examples" / "get_company_info.json"
FAST = ["--poll-interval", "0.05", "-q"]


@pytest.fixture
def records(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}", "notes": "n"} for i in range(1500)])


@pytest.fixture
def azure(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[dict[str, str], Simulator]]:
    config: SimConfig = getattr(request, "param", SimConfig(api_key=KEY, batch_seconds=0.3))
    with simulator_env(config, monkeypatch) as served:
        yield served


def _argv(*extra: str) -> list[str]:
    return ["in.jsonl", "--batch-api", "--template", "About {company}", "--max-tokens", "50", *FAST, *extra]


def _exactly_once(tmp_path: Path, n: int) -> list[dict]:
    results = read_jsonl(tmp_path / "in.results.jsonl")
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert sorted(r["line"] for r in results + errors) == list(range(1, n + 1))
    return results


def test_1500_lines_at_600_a_file_make_3_jobs_and_land_exactly_once(
    tmp_path: Path, records: Path, azure: tuple[dict[str, str], Simulator]
) -> None:
    _, sim = azure
    assert main(_argv("--max-lines-per-file", "600")) == 0
    assert sim.batches.created == 3
    sizes = sorted(len(job.lines) for job in sim.batches.jobs.values())
    assert sizes == [300, 600, 600]
    assert all(not content.startswith(b"\xef\xbb\xbf") for _, content in sim.batches.files.values())
    results = _exactly_once(tmp_path, 1500)
    assert not read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert results[0]["output"] and results[0]["batch_id"].startswith("batch_") and results[0]["deployment"] == "dep"
    assert sim.statuses["200"] == 0 and sim.billed_twice() == 0  # nothing live, nothing twice
    assert BatchState.load(tmp_path / "in.results.jsonl.state" / "batches").open_parts() == []  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "azure",
    [SimConfig(api_key=KEY, batch_seconds=0.3, batch_fail_rate=0.05, batch_bad_output_rate=0.03)],
    indirect=True,
)
def test_lines_failing_server_side_or_with_invalid_output_run_live_and_nothing_is_billed_twice(
    tmp_path: Path, records: Path, azure: tuple[dict[str, str], Simulator]
) -> None:
    _, sim = azure
    assert main(_argv("--max-lines-per-file", "600", "--tools", str(TOOLS))) == 0
    results = _exactly_once(tmp_path, 1500)
    assert not read_jsonl(tmp_path / "in.results.errors.jsonl")
    live = [r for r in results if "batch_id" not in r]
    assert 80 < len(live) < 180  # about 8% of 1,500: 5% failed server-side, 3% broke the schema
    assert sim.statuses["200"] == len(live)  # exactly those went live
    failed_server_side = sum(job.failed for job in sim.batches.jobs.values())
    broken = sim.statuses["batch-200-broken"]
    assert failed_server_side > 0 and broken > 0 and len(live) == failed_server_side + broken
    # A line answered in a batch is never sent live; only broken output is asked again (billed again, knowingly).
    assert sim.billed_twice() == broken


def test_no_live_fallback_records_them_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}", "notes": "n"} for i in range(400)])
    config = SimConfig(api_key=KEY, batch_seconds=0.2, batch_fail_rate=0.1)
    with simulator_env(config, monkeypatch) as (_, sim):
        assert main(_argv("--no-live-fallback")) == 1
    errors = read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert errors and all(e["error"]["code"] == "server_error" for e in errors)
    assert sim.statuses["200"] == 0
    _exactly_once(tmp_path, 400)


def _spawn(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "asyncbatch", *_argv("--max-lines-per-file", "600", *extra)]
    return subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)


def _polling(tmp_path: Path, env: dict[str, str], sim: Simulator) -> subprocess.Popen[str]:
    """Start the CLI and return once it polls its 3 jobs (looks come after every job is created and saved)."""
    first = _spawn(tmp_path, env)
    for _ in range(3):
        assert sim.batches.polled_signal.acquire(timeout=60), "the jobs were not polled"
    return first


def _killed_while_polling(tmp_path: Path, env: dict[str, str], sim: Simulator) -> None:
    first = _polling(tmp_path, env, sim)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)


@pytest.mark.parametrize("azure", [SimConfig(api_key=KEY, batch_seconds=1.5)], indirect=True)
def test_kill_9_while_polling_then_the_same_command_creates_no_job_twice(
    tmp_path: Path, records: Path, azure: tuple[dict[str, str], Simulator]
) -> None:
    env, sim = azure
    _killed_while_polling(tmp_path, env, sim)
    assert main(_argv("--max-lines-per-file", "600")) == 0
    assert sim.batches.created == 3  # the same three jobs, polled again
    _exactly_once(tmp_path, 1500)
    assert sim.billed_twice() == 0


@pytest.mark.parametrize("azure", [SimConfig(api_key=KEY, batch_seconds=1.5)], indirect=True)
def test_a_job_created_just_before_a_crash_is_found_by_its_metadata_not_created_again(
    tmp_path: Path, records: Path, azure: tuple[dict[str, str], Simulator]
) -> None:
    env, sim = azure
    _killed_while_polling(tmp_path, env, sim)
    path = tmp_path / "in.results.jsonl.state" / "batches"
    saved = orjson.loads(path.read_bytes())
    for part in saved["parts"]:  # as if the process died between creating each job and saving its id
        part["batch_id"] = part["status"] = None
    path.write_bytes(orjson.dumps(saved))
    assert main(_argv("--max-lines-per-file", "600")) == 0
    assert sim.batches.created == 3
    _exactly_once(tmp_path, 1500)


# The jobs take long enough that each is still running when --cancel reaches it, however loaded the machine.
@pytest.mark.parametrize("azure", [SimConfig(api_key=KEY, batch_seconds=30)], indirect=True)
def test_ctrl_c_leaves_the_jobs_running_cancel_cancels_them_and_a_rerun_finishes_exactly_once(
    tmp_path: Path, records: Path, azure: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    env, sim = azure
    first = _polling(tmp_path, env, sim)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=30)
    assert first.returncode == 130
    assert "3 Batch API job(s) keep running on Azure" in err and "--cancel" in err
    assert all(job.cancel_at is None for job in sim.batches.jobs.values())
    assert main(["in.jsonl", "--template", "About {company}", "-q"]) == 2  # live now would pay twice
    assert "still open" in capsys.readouterr().err
    assert main(_argv("--max-lines-per-file", "600", "--cancel")) == 75
    assert all(job.cancel_at is not None for job in sim.batches.jobs.values())
    assert main(_argv("--max-lines-per-file", "600")) == 0  # collects what they finished, the rest live
    assert sim.batches.created == 3
    _exactly_once(tmp_path, 1500)
    assert sim.billed_twice() == 0


@pytest.mark.parametrize(
    "azure",
    [
        SimConfig(api_key=KEY, batch_seconds=0.3, batch_queue_tokens=36_000, batch_expire_jobs=(1,)),
        # the 2024-10-21 spec's shape: errors.data is one object, not a list
        SimConfig(
            api_key=KEY,
            batch_seconds=0.3,
            batch_queue_tokens=36_000,
            batch_expire_jobs=(1,),
            batch_errors_shape="object",
        ),
    ],
    indirect=True,
)
def test_a_job_over_the_queued_token_limit_is_created_again_and_an_expired_job_runs_live(
    tmp_path: Path, records: Path, azure: tuple[dict[str, str], Simulator]
) -> None:
    """Each 600-line job queues 33k tokens: the second is refused while the first runs, then created again."""
    _, sim = azure
    assert main(_argv("--max-lines-per-file", "600")) == 0
    statuses = [job.status for job in sorted(sim.batches.jobs.values(), key=lambda j: j.number)]
    assert "failed" in statuses and statuses.count("completed") >= 1
    refused = [j for j in sim.batches.jobs.values() if j.errors and j.errors[0]["code"] == "token_limit_exceeded"]
    assert refused
    expired = [j for j in sim.batches.jobs.values() if j.status == "expired"]
    assert expired and sim.statuses["200"] >= len(expired[0].lines) // 2  # its unanswered half ran live
    _exactly_once(tmp_path, 1500)
    assert sim.billed_twice() == 0


def test_dry_run_prints_the_files_and_jobs_and_the_price_against_live(
    tmp_path: Path, records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["in.jsonl", "--dry-run", "--batch-api", "--max-lines-per-file", "600", "--template", "{company}",
                 "--max-tokens", "50", "--deployment", "gpt-4o"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "3 file(s) and job(s) (3 chat)" in out
    live, batch = map(float, re.search(r"at most ([\d.]+) USD live, ([\d.]+) USD through the Batch API", out).groups())
    assert batch == pytest.approx(live / 2, abs=0.01)


def test_files_split_at_the_size_limit_too() -> None:
    splitter = Splitter(max_lines=100, max_bytes=1000)
    for line_no in range(1, 31):
        splitter.place("chat", line_no, 100)
    splitter.place("embeddings", 31, 10)
    assert [(p.api, p.lines) for p in splitter.parts] == [("chat", 10), ("chat", 10), ("chat", 10), ("embeddings", 1)]
    assert splitter.parts[1].ranges == [[11, 20]]


@pytest.mark.parametrize("azure", [SimConfig(api_key=KEY, batch_seconds=0.2)], indirect=True)
def test_the_v1_api_routes_work_too(tmp_path: Path, azure: tuple[dict[str, str], Simulator]) -> None:
    _, sim = azure
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}"} for i in range(50)])
    assert main([*_argv(), "--api-version", "v1"]) == 0
    assert sim.batches.created == 1
    job = next(iter(sim.batches.jobs.values()))
    assert job.endpoint == "/v1/chat/completions" and job.lines[0]["url"] == "/v1/chat/completions"
    _exactly_once(tmp_path, 50)


@pytest.mark.parametrize("azure", [SimConfig(api_key=KEY, batch_seconds=0.2)], indirect=True)
def test_a_file_mixing_chat_and_embeddings_makes_one_job_per_api(
    tmp_path: Path, azure: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sim = azure
    rows = []
    for i in range(60):
        if i % 3:
            rows.append({"custom_id": f"c{i}", "method": "POST", "url": "/chat/completions",
                         "body": {"messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 5}})  # fmt: skip
        else:
            rows.append({"custom_id": f"e{i}", "method": "POST", "url": "/embeddings", "body": {"input": f"text {i}"}})
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["in.jsonl", "--batch-api", *FAST]) == 0
    assert [job.endpoint for job in sim.batches.jobs.values()] == ["/chat/completions"]  # Azure: no embeddings job
    assert "20 embeddings lines run live, at the live price: Azure's Global Batch" in capsys.readouterr().err
    results = _exactly_once(tmp_path, 60)
    vectors = [r["output"] for r in results if r["custom_id"].startswith("e")]
    assert len(vectors) == 20 and all(isinstance(v, list) and v for v in vectors)
    assert all(r.get("deployment") for r in results if r["custom_id"].startswith("e"))  # answered live
    assert sim.statuses["batch-create"] == 1


def test_azures_global_batch_refuses_an_embeddings_job_and_an_openai_endpoint_batches_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/embeddings", "body": {"input": f"t{i}"}} for i in range(20)
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    with serve_in_thread(SimConfig(api_key=KEY, batch_seconds=0.1)) as (url, sim):
        client = OpenAI(base_url=f"{url}/openai/v1/", api_key=KEY, max_retries=0)  # the simulator's Azure routes
        uploaded = client.files.create(file=(tmp_path / "in.jsonl").open("rb"), purpose="batch")
        with pytest.raises(BadRequestError, match="not supported by Global Batch"):
            client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
        for name, value in {"OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": KEY, "OPENAI_MODEL": "emb"}.items():
            monkeypatch.setenv(name, value)
        assert main(["in.jsonl", "--batch-api", *FAST]) == 0
        assert [job.endpoint for job in sim.batches.jobs.values()] == ["/v1/embeddings"]
    assert "run live" not in capsys.readouterr().err
    assert len(_exactly_once(tmp_path, 20)) == 20


def test_a_wrong_key_stops_at_once_with_exit_2_and_a_hint(
    tmp_path: Path, azure: tuple[dict[str, str], Simulator], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "company": f"Co{i}"} for i in range(10)])
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "not-the-key-123")
    assert main(_argv()) == 2
    err = capsys.readouterr().err
    assert "the Batch API refused: HTTP 401" in err and "HINT: check AZURE_OPENAI_API_KEY" in err
    assert "not-the-key-123" not in err
    assert not read_jsonl(tmp_path / "in.results.jsonl") and azure[1].batches.created == 0
