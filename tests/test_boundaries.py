"""The edges of the promises, through the CLI: one writer whatever the name, no secret in any byte,
no file touched that is not ours, input changes that neither lose a line nor pay for one twice."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pytest

from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator, serve_in_thread
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "sk-PLANTED-XYZ123"  # every secret here is planted: no byte of it may appear anywhere
APIM = "apim-PLANTED-4567"
BEARER = "tok-PLANTED-BEARER-89"
OTHER_KEY = "sk-PLANTED-OTHER-55"
SECRETS = (KEY, APIM, BEARER, OTHER_KEY)
HEADER = ["--header", f"Ocp-Apim-Subscription-Key: {APIM}"]


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY), monkeypatch) as (env, simulator):
        yield env, simulator


def _inputs(tmp_path: Path, n: int, name: str = "in.jsonl") -> Path:
    return write_jsonl(tmp_path / name, [batch_line(f"r{i}", f"prompt {i}") for i in range(n)])


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", *args]


def _cli(cwd: Path, env: dict[str, str], *args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI, run to its end: in this process (the same ``main``), or in its own where the disk is "full"."""
    if limit is None:
        out, err = io.StringIO(), io.StringIO()
        environment = mock.patch.dict(os.environ, env, clear=True)
        with environment, contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["in.jsonl", "--no-progress", *args])
        return subprocess.CompletedProcess(_cmd(*args), code, out.getvalue(), err.getvalue())

    def preexec() -> None:  # a full disk, as the process sees it: writes past ``limit`` bytes fail
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        _cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=preexec
    )


def _start(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(_cmd(*args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ids(tmp_path: Path, results: str = "in.results.jsonl", errors: str = "in.results.errors.jsonl") -> list[str]:
    return sorted(r["custom_id"] for r in read_jsonl(tmp_path / results) + read_jsonl(tmp_path / errors))


def _leaks(tmp_path: Path, *streams: str) -> list[str]:
    """The planted secrets found, whole or their first 12 characters, in any file under ``tmp_path`` or a stream."""
    blobs = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    blobs += [s.encode() for s in streams]
    return [secret for secret in SECRETS for blob in blobs if secret[:12].encode() in blob]


def _tree(tmp_path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else b"<dir>" for p in tmp_path.rglob("*")}


# -- one writer, whatever the name --------------------------------------------------------------


@pytest.mark.parametrize("name", ["another --checkpoint", "a symbolic link", "a hard link"])
def test_a_second_writer_of_the_same_results_by_any_name_is_refused_and_nothing_is_billed_twice(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], name: str
) -> None:
    env, simulator = sim
    simulator.config.latency = 0.05
    n = 600
    _inputs(tmp_path, n)
    results = tmp_path / "in.results.jsonl"
    results.touch()
    second = {
        "another --checkpoint": ["-o", "in.results.jsonl", "--checkpoint", "other.checkpoint"],
        "a symbolic link": ["-o", "link.jsonl"],
        "a hard link": ["-o", "hard.jsonl"],
    }[name]
    if name == "a symbolic link":
        (tmp_path / "link.jsonl").symlink_to("in.results.jsonl")
    first = _start(tmp_path, env, "-q", "-c", "10")
    try:
        assert simulator.first_request.wait(timeout=60)
        if name == "a hard link":  # made once the first run has its file open: a file of two names is not started on
            os.link(results, tmp_path / "hard.jsonl")
        refused = _cli(tmp_path, env, "-q", "-c", "10", *second)
        assert first.poll() is None  # the two overlapped: the refusal is what kept them apart
        assert refused.returncode == 2
        if name == "a symbolic link":  # refused as every link at an output is, before the lock is looked at
            assert "-o link.jsonl is a symbolic link" in refused.stderr
        elif name == "a hard link":  # the same
            assert "-o hard.jsonl is one of 2 names of the same file (a hard link)" in refused.stderr
        else:
            assert f"another asyncbatch run (pid {first.pid}" in refused.stderr and "is writing" in refused.stderr
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
    assert _ids(tmp_path) == sorted(f"r{i}" for i in range(n))
    assert simulator.billed_twice() == 0 and simulator.statuses["200"] == n


# -- no secret in any byte --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "status", "offset"),
    [  # the first credential quoted ends one character past the cut
        ("key", 200, 200 - len(KEY) + 1),  # a 200 that is no answer: its body is quoted up to 200 bytes
        ("key", 500, 2000 - len(KEY) + 1),  # an error body that is not JSON: kept up to 2,000 characters
        ("key", 500, 64 * 1024 - len(KEY) + 1),  # an error body is read only so far
        ("bearer", 200, 200 - len(BEARER) + 1),
        ("bearer", 500, 2000 - len(BEARER) + 1),
    ],
)
def test_a_secret_that_straddles_a_cut_is_masked_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str, status: int, offset: int
) -> None:
    config = SimConfig(api_key=BEARER if auth == "bearer" else KEY, gateway_key=APIM)
    with simulator_env(config, monkeypatch) as (env, simulator):
        simulator.config.script.update({"prompt 1": [f"echo-at:{status}:{offset}"] * 2})
        args = ["--max-attempts", "2", "--backoff", "0.01", *HEADER]
        if auth == "bearer":
            env = {k: v for k, v in env.items() if k != "AZURE_OPENAI_API_KEY"}
            args += ["--token-command", f"echo {BEARER}"]
        _inputs(tmp_path, 4)
        proc = _cli(tmp_path, env, *args)
    assert proc.returncode == 1, proc.stderr
    (error,) = read_jsonl(tmp_path / "in.results.errors.jsonl")
    if offset < 2000:  # the server did quote the credentials, at the cut; they were masked
        assert "***" in json.dumps(error)
    assert _leaks(tmp_path, proc.stdout, proc.stderr) == []


@pytest.mark.parametrize("stop", ["interrupted (130)", "stopped (75)"])
def test_the_resume_hint_names_the_headers_to_pass_again_but_never_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    with simulator_env(SimConfig(api_key=KEY, gateway_key=APIM, latency=0.05), monkeypatch) as (env, simulator):
        _inputs(tmp_path, 400)
        if stop == "stopped (75)":
            simulator.config.exhaust_after = 20
            proc = _cli(tmp_path, env, "-c", "5", *HEADER)
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        else:
            running = _start(tmp_path, env, "-c", "5", *HEADER)
            assert simulator.first_request.wait(timeout=60)
            running.send_signal(signal.SIGINT)
            out, err = running.communicate(timeout=60)
            code = running.returncode
    assert code == (130 if stop == "interrupted (130)" else 75), err
    said = " ".join(err.split())
    assert "Ocp-Apim-Subscription-Key: <your value>" in err
    assert "give the value of the Ocp-Apim-Subscription-Key header(s) again: it is not printed" in said
    assert _leaks(tmp_path, out, err) == []


def test_a_pool_member_that_quotes_its_credentials_is_set_aside_without_printing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ExitStack() as stack:
        urls = {}
        for name, key, faults in (("good", KEY, {}), ("bad", OTHER_KEY, {"401-echo": 1.0})):
            urls[name], _ = stack.enter_context(serve_in_thread(SimConfig(api_key=key, fault_rates=faults)))
        (tmp_path / "pool.toml").write_text(
            "".join(
                f'[[deployments]]\nname = "{name}"\nendpoint = "{url}"\ndeployment = "dep-{name}"\n'
                f'api_key_env = "KEY_{name.upper()}"\n\n'
                for name, url in urls.items()
            )
        )
        env = {**os.environ, "KEY_GOOD": KEY, "KEY_BAD": OTHER_KEY}
        _inputs(tmp_path, 50)
        proc = _cli(tmp_path, env, "--deployments", "pool.toml", *HEADER)
    assert proc.returncode == 0, proc.stderr
    assert "deployment bad set aside" in proc.stderr and '"api-key": "***"' in proc.stderr
    assert _leaks(tmp_path, proc.stdout, proc.stderr) == []


def test_a_dotenv_file_never_runs_a_command_and_says_what_it_set(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    _inputs(tmp_path, 5)
    (tmp_path / ".env").write_text(
        'ASYNCBATCH_TOKEN_COMMAND="touch PWNED; echo x"\nAZURE_OPENAI_API_VERSION=2024-10-21\n'
    )
    proc = _cli(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "PWNED").exists() and simulator.statuses["200"] == 5  # the key was used, not bearer
    assert "sets ASYNCBATCH_TOKEN_COMMAND, which is ignored" in proc.stderr
    assert "read AZURE_OPENAI_API_VERSION from" in proc.stderr and ".env" in proc.stderr
    # the key itself may come from .env: the real environment's command still loses to an explicit key
    (tmp_path / ".env").write_text(f"AZURE_OPENAI_API_KEY={KEY}\n")
    without_key = {k: v for k, v in env.items() if k != "AZURE_OPENAI_API_KEY"}
    _inputs(tmp_path, 5, "more.jsonl")
    proc = subprocess.run(
        [sys.executable, "-m", "asyncbatch", "more.jsonl", "--no-progress"],
        cwd=tmp_path,
        env={**without_key, "ASYNCBATCH_TOKEN_COMMAND": "touch PWNED2; echo x"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "PWNED2").exists() and "read AZURE_OPENAI_API_KEY from" in proc.stderr


# -- no file touched that is not ours ----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "content"),
    [
        ("-o", b"line one\nline two"),  # a text file with no final newline
        ("--errors", b"line one\nline two"),
        ("-o", b'{"id":"batch_req_1","line":1}\nsomething else\n{"id":"batch_req_'),  # ours at both ends only
    ],
)
def test_an_output_that_is_not_ours_is_refused_and_left_byte_for_byte(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], option: str, content: bytes
) -> None:
    env, simulator = sim
    _inputs(tmp_path, 5)
    (tmp_path / "notes.txt").write_bytes(content)
    proc = _cli(tmp_path, env, option, "notes.txt")
    assert proc.returncode == 2 and "it is left as it is" in proc.stderr
    assert (tmp_path / "notes.txt").read_bytes() == content and simulator.requests == 0


@pytest.mark.parametrize(
    "link",
    [
        "in.results.jsonl.state/lock",
        "in.results.jsonl.state/checkpoint",
        "in.results.jsonl.state/ids",
        "in.results.jsonl.state/sent",
        "in.results.jsonl.state/batches",
        "in.results.jsonl.state/checkpoint.tmp",
        "in.results.jsonl.state",  # the directory itself
    ],
)
def test_state_files_that_are_links_are_refused_and_their_targets_left_alone(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], link: str
) -> None:
    env, simulator = sim
    _inputs(tmp_path, 5)
    victim = tmp_path / "victim"
    victim.mkdir() if link.endswith(".state") else victim.write_bytes(b"precious\n")
    (tmp_path / link).parent.mkdir(exist_ok=True)
    (tmp_path / link).symlink_to(victim)
    before = _tree(tmp_path)
    proc = _cli(tmp_path, env)
    assert proc.returncode == 2 and "is a symbolic link" in proc.stderr
    assert _tree(tmp_path) == before and simulator.requests == 0


@pytest.mark.parametrize("option", ["-o", "--errors", "--checkpoint"])
def test_a_path_naming_a_directory_is_refused_before_anything_is_created(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], option: str
) -> None:
    env, simulator = sim
    _inputs(tmp_path, 5)
    (tmp_path / "somedir").mkdir()
    before = _tree(tmp_path)
    proc = _cli(tmp_path, env, option, "somedir")
    assert proc.returncode == 2 and "somedir is a directory" in proc.stderr
    assert _tree(tmp_path) == before and simulator.requests == 0


def test_results_and_errors_that_are_one_file_by_two_names_are_refused(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, _ = sim
    _inputs(tmp_path, 5)
    (tmp_path / "a.jsonl").touch()
    os.link(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    proc = _cli(tmp_path, env, "-o", "a.jsonl", "--errors", "b.jsonl")
    assert proc.returncode == 2 and "are the same file" in proc.stderr


# -- the input: identity from what was read ----------------------------------------------------


@pytest.mark.parametrize("lost", ["the checkpoint", "the whole state directory"])
def test_a_line_inserted_after_the_state_is_lost_is_sent_once_and_no_line_twice(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], lost: str
) -> None:
    env, simulator = sim
    n = 60
    path = _inputs(tmp_path, n)
    assert _cli(tmp_path, env).returncode == 0
    state = tmp_path / "in.results.jsonl.state"
    if lost == "the checkpoint":
        (state / "checkpoint").unlink()
    else:
        for file in state.iterdir():
            file.unlink()
        state.rmdir()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:30], json.dumps(batch_line("new", "a new prompt")) + "\n", *lines[30:]]))
    sent = simulator.requests
    proc = _cli(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert simulator.requests == sent + 1 and simulator.answered["a new prompt"] == 1
    assert _ids(tmp_path) == sorted([*(f"r{i}" for i in range(n)), "new"])
    assert simulator.billed_twice() == 0


def test_an_input_cut_short_during_a_run_and_restored_resumes(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    simulator.config.latency = 0.02
    n = 1000
    path = _inputs(tmp_path, n)
    original = path.read_bytes()
    running = _start(tmp_path, env, "-c", "5")
    results = tmp_path / "in.results.jsonl"
    deadline = time.monotonic() + 60
    while not results.exists() or results.read_bytes().count(b"\n") < 50:  # a condition, polled
        assert running.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    path.write_bytes(original[:1000])  # cut short, behind the running reader...
    _, err = running.communicate(timeout=120)
    assert running.returncode in (0, 1), err
    path.write_bytes(original)  # ...and put back, byte for byte
    proc = _cli(tmp_path, env, "-c", "20")
    assert proc.returncode in (0, 1), proc.stderr
    results, errors = read_jsonl(tmp_path / "in.results.jsonl"), read_jsonl(tmp_path / "in.results.errors.jsonl")
    assert sorted(r["line"] for r in results + errors) == list(range(1, n + 1))
    assert [e["error"]["code"] for e in errors] in ([], ["invalid_input"])  # the line it met half-written, if any
    assert simulator.billed_twice() == 0


# -- disk full and signals ---------------------------------------------------------------------


def test_a_full_disk_leaves_no_torn_line_names_the_file_and_the_next_run_finishes(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, _ = sim
    n = 400
    _inputs(tmp_path, n)
    full = _cli(tmp_path, env, "-c", "20", "--fsync", "always", limit=60_000)
    assert full.returncode == 2 and "cannot write in.results.jsonl: File too large" in full.stderr
    data = (tmp_path / "in.results.jsonl").read_bytes()
    assert data.endswith(b"\n") and 10 < data.count(b"\n") < n  # every line whole, at once
    assert _cli(tmp_path, env, "-c", "20").returncode == 0
    assert _ids(tmp_path) == sorted(f"r{i}" for i in range(n))


def test_a_state_file_that_cannot_be_written_is_named(tmp_path: Path, sim: tuple[dict[str, str], Simulator]) -> None:
    env, _ = sim
    _inputs(tmp_path, 50)
    state = tmp_path / "in.results.jsonl.state"
    state.mkdir()
    (state / "sent").write_bytes(bytes(100_000))  # the journal is already as large as the disk allows
    proc = _cli(tmp_path, env, limit=100_000)
    assert proc.returncode == 2 and "in.results.jsonl.state/sent: File too large" in proc.stderr
    assert (tmp_path / "in.results.jsonl").read_bytes().endswith(b"\n") or not (
        tmp_path / "in.results.jsonl"
    ).stat().st_size


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.parametrize("when", [0.0, 0.3, "mid-run"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_any_moment_exits_130_with_a_message(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], when: float | str, sig: signal.Signals
) -> None:
    """Seconds after asyncbatch's handlers are in (the interpreter's own start-up is Python's): importing,
    building the configuration, opening the outputs; or sending."""
    env, simulator = sim
    simulator.config.latency = 0.05
    _inputs(tmp_path, 300)
    running = _start(tmp_path, env, "-c", "5")
    deadline = time.monotonic() + 60
    while not _catches(running.pid, signal.SIGTERM):  # SIGTERM: Python itself never catches it
        assert running.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)  # a poll of the process's state, not a wait for time to pass
    if isinstance(when, str):
        assert simulator.first_request.wait(timeout=60)
    else:
        time.sleep(when)  # the instant of the signal, not a wait for anything
    running.send_signal(sig)
    _, err = running.communicate(timeout=60)
    assert running.returncode == 130 and "interrupted" in err, err
    assert "Traceback" not in err
    proc = _cli(tmp_path, env, "-c", "20")
    assert proc.returncode == 0 and _ids(tmp_path) == sorted(f"r{i}" for i in range(300))
