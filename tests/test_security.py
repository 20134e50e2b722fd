"""Secrets in every form, credentials judged at configuration, the token command a child we own, SIGHUP.

Every secret here is planted; the check that finds it (``tests/fuzz/secrets.py``) decodes on its own and
does not trust the redactor it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.errors import ConfigError, FatalAPIError
from asyncbatch.live.tokens import Tokens
from asyncbatch.redact import MASK, RedactingStream, Redactor
from asyncbatch.simulator import SimConfig, Simulator
from asyncbatch.simulator.tokens import make_token
from tests.fuzz.secrets import basic, leaked
from tests.helpers import FakeClock, batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "sk-PLANTED/KEY-4711"
PASSWORD = "pw-PLANTED-0815"
TOKEN = "tok-PLANTED-BEARER-42"

# -- one redactor for every form ------------------------------------------------------------------

secrets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40)
FORMS = ("raw", "json", "json-upper", "json-twice", "mixed", "slash", "percent", "percent-twice", "percent-some")


def form(secret: str, kind: str, pick: st.DrawFn | None = None) -> str:
    """``secret`` as it may travel: JSON-escaped, URL-encoded, or a mix, character by character."""
    if kind == "raw":
        return secret
    if kind == "json":
        return "".join(f"\\u{ord(c):04x}" for c in secret)
    if kind == "json-upper":
        return "".join(f"\\u{ord(c):04X}" for c in secret)
    if kind == "json-twice":  # a JSON string inside a JSON string
        return "".join(f"\\\\u{ord(c):04x}" for c in secret)
    if kind == "mixed":  # every other character escaped, in either case of hex (and \\ and " always, as JSON does)
        return "".join(f"\\u{ord(c):04{'xX'[i % 4 == 1]}}" if i % 2 or c in '\\"' else c for i, c in enumerate(secret))
    if kind == "slash":  # as JSON may write it: / escaped (and \\ and ", as always)
        return json.dumps(secret)[1:-1].replace("/", "\\/")
    if kind == "percent":
        return "".join(f"%{ord(c):02X}" for c in secret)
    if kind == "percent-twice":
        return quote(quote(secret, safe=""), safe="")
    return quote(secret, safe="")  # percent-some: only the characters a URL needs encoded


@settings(max_examples=300, deadline=None)
@given(
    secret=secrets,
    kind=st.sampled_from(FORMS),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
@example(secret="nab-PLANTED", kind="raw", before="x\\", after="")  # a mask after a backslash: a broken escape
@example(secret="abcd/efgh/ij", kind="slash", before="", after="")
@example(secret="00000000", kind="mixed", before="%8", after="")  # %8 and the secret's 0: a false escape
def test_every_form_of_a_secret_is_masked_in_text_and_in_bytes(secret: str, kind: str, before: str, after: str) -> None:
    redactor = Redactor([secret])
    planted = before + form(secret, kind) + after
    assert leaked([secret], redactor.text(planted)) == []
    assert leaked([secret], redactor.bytes(planted.encode())) == []


@settings(max_examples=300, deadline=None)
@given(secret=secrets, kind=st.sampled_from(FORMS), content=st.text(max_size=60), where=st.integers(0, 60))
@example(secret="nEY-PLANTED", kind="raw", content="\n", where=1)  # JSON's \n then the secret: \*** is no escape
@example(secret="bPLANTED-1", kind="raw", content="\b", where=1)
@example(secret="00000000", kind="raw", content="\x00", where=1)  # \u0000 then 0s: a mask inside an escape
@example(secret="0000000\\", kind="raw", content="", where=0)  # the secret's \ is half of JSON's \\
@example(secret="000000/\\", kind="slash", content="\x1f", where=0)  # \\ then \u001f, read left to right
@example(secret="00000000", kind="json-twice", content="", where=0)  # three levels of JSON
@example(secret="00000%00", kind="percent-twice", content="", where=0)  # %252500 is %00 encoded twice
@example(secret="0000%00/", kind="slash", content="", where=0)  # JSON twice, not percent: the %00 is the secret's
@example(secret=":000000\\", kind="json", content="\\", where=1)  # the secret's \ then the record's closing quote
@example(secret="r0000000", kind="json-twice", content="\\", where=1)  # \\\u0072: \r, or a loose \u0072
@example(secret="0000000*", kind="raw", content="0000000", where=7)  # the mask beside what is left spelt it again
@example(secret='00"%00/\\', kind="slash", content="", where=0)  # \/ decoded alone: the %00 is the secret's own
@example(secret="b000/%00", kind="slash", content="\\", where=1)  # \\b: a JSON \b, or a \ then the secret
@example(secret='0000000"', kind="raw", content="0000000", where=0)  # the record's closing quote spells it again
@example(secret='\\\\00000"', kind="raw", content="\\00000\\", where=0)  # \\ then the record's quote: no \"
def test_a_record_holding_a_secret_in_any_form_stays_valid_json_and_holds_it_in_no_decoded_form(
    secret: str, kind: str, content: str, where: int
) -> None:
    """As the writer writes it (``Redactor.json``), and as any bytes are (an error body): no form of the secret
    is left. Of the writer's line, its data is searched: a secret's raw ``"`` may be completed by the record's own
    quote (``0000000"`` in ``{"c":"***0000000"}``), a secret's ``\\"`` be the escape of a quote of the data's:
    JSON's, not the secret. The bytes stay JSON too (a mask never breaks an escape) unless the secret holds a raw
    ``"``: bytes cannot tell it from the record's own, and mask both."""
    text = content[:where] + form(secret, kind) + content[where:]
    record = orjson.dumps({"custom_id": "a", "response": {"body": {"choices": [{"message": {"content": text}}]}}})
    redactor = Redactor([secret])
    masked = redactor.bytes(record)
    kept = [orjson.loads(redactor.json(record))] + ([orjson.loads(masked)] if '"' not in secret else [])
    data = [v for r in kept for v in (r["custom_id"], r["response"]["body"]["choices"][0]["message"]["content"])]
    assert leaked([secret], masked, *data) == []


@settings(max_examples=300, deadline=None)
@given(secret=secrets, kind=st.sampled_from(FORMS), cut=st.floats(0, 1), prefix=st.text(" \n\u00e9\u00e8", max_size=20))
@example(secret="000\\00000", kind="json", cut=0.375, prefix="")  # cut inside the escape of a backslash
@example(secret="00000/\\f", kind="slash", cut=1.0, prefix="")  # \\f is no form feed
@example(secret="00%00000", kind="raw", cut=0.5, prefix="")  # %0 at the end: an escape begun, or the secret's own
@example(secret="%:000:0:", kind="percent-twice", cut=0.75, prefix="")  # 253A: also the hex form's beginning
def test_a_secret_begun_at_a_cut_is_masked_in_any_form(secret: str, kind: str, cut: float, prefix: str) -> None:
    """An error body read only so far: whatever is left of a secret at its end (4 characters or more) is masked.
    (The prefix holds none of a secret's characters: what is found can only be the secret's.)"""
    planted = form(secret, kind).encode()
    head = prefix.encode()
    kept = Redactor([secret]).cut_short(head + planted[: int(cut * len(planted))])
    assert leaked([secret[:4]], kept) == []


def test_userinfo_and_credential_headers_are_masked_whatever_their_values() -> None:
    redactor = Redactor()
    text = (
        'see https://admin:hunter22@host/x, "http:\\/\\/t0ken123@h", {"api-key": "abcdef12"} '
        "Authorization: Bearer eyJhbGciOi.x.y and ocp-apim-subscription-key=zzzz9999&x=1"
    )
    masked = redactor.text(text)
    for value in ("admin", "hunter22", "t0ken123", "abcdef12", "eyJhbGciOi", "zzzz9999"):
        assert value not in masked
    assert "https://***@host/x" in masked and '"api-key": "***"' in masked and "Bearer ***" in masked


# -- the endpoint's password ------------------------------------------------------------------------


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY, deployment="dep"), monkeypatch) as (env, simulator):
        yield env, simulator


def _in_process(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env, clear=True),
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(["in.jsonl", "--no-progress", *args])
    return code, out.getvalue(), err.getvalue()


def _outputs(tmp_path: Path) -> list[bytes]:
    """Every byte written under ``tmp_path`` but the input: results, errors, state, cache."""
    return [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "in.jsonl"]


def _with_userinfo(url: str, password: str = PASSWORD) -> str:
    return url.replace("http://", f"http://admin:{quote(password, safe='')}@")


PASSWORD_FORMS = [PASSWORD, basic("admin", PASSWORD)]


def test_a_run_with_a_password_in_the_endpoint_url_writes_and_prints_it_nowhere(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    env["AZURE_OPENAI_ENDPOINT"] = _with_userinfo(env["AZURE_OPENAI_ENDPOINT"])
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"mention {PASSWORD} {i}") for i in range(20)])
    code, out, err = _in_process(tmp_path, env, "--cache", "answers.db")
    assert code == 0, err
    assert simulator.statuses["200"] == 20 and len(read_jsonl(tmp_path / "in.results.jsonl")) == 20
    assert (tmp_path / "answers.db").exists() and (tmp_path / "in.results.jsonl.state").is_dir()
    assert leaked(PASSWORD_FORMS, out, err, *_outputs(tmp_path)) == []


@pytest.mark.parametrize("failure", ["wrong deployment (404)", "wrong scheme", "pasted request URL", "wrong key"])
def test_an_error_about_an_endpoint_with_a_password_prints_it_nowhere(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], failure: str
) -> None:
    env, _ = sim
    url = _with_userinfo(env["AZURE_OPENAI_ENDPOINT"])
    args: list[str] = []
    if failure == "wrong deployment (404)":
        args = ["--deployment", "missing"]
    elif failure == "wrong scheme":
        url = url.replace("http://", "ftp://")
    elif failure == "pasted request URL":
        url += "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
    else:
        env["AZURE_OPENAI_API_KEY"] = "sk-wrong-key-0000"
    env["AZURE_OPENAI_ENDPOINT"] = url
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", "x") for i in range(5)])
    code, out, err = _in_process(tmp_path, env, "--max-attempts", "1", *args)
    assert code == 2 and "asyncbatch: error:" in err and "Traceback" not in err, err
    assert leaked(PASSWORD_FORMS, out, err, *_outputs(tmp_path)) == []
    if failure != "wrong key":  # the URL is named, its userinfo masked
        assert "admin:***@" in err or "***@" in err


def test_a_password_in_the_url_is_refused_where_the_authorization_header_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://admin:{PASSWORD}@127.0.0.1:9/v1", "OPENAI_MODEL": "m"}
    code, out, err = _in_process(tmp_path, env)
    assert code == 2 and "Authorization" in err and "remove the user:password@ part" in err
    assert leaked(PASSWORD_FORMS, out, err) == []


# -- a key in another form inside an answer -----------------------------------------------------------


def test_a_key_escaped_inside_an_answer_is_in_no_decoded_form_in_the_results_or_the_cache(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, _ = sim
    prompts = [f"quote {form(KEY, kind)} back" for kind in FORMS]  # the answer echoes each form of the key
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", p) for i, p in enumerate(prompts)])
    code, out, err = _in_process(tmp_path, env, "--cache", "answers.db")
    assert code == 0, err
    results = read_jsonl(tmp_path / "in.results.jsonl")
    assert len(results) == len(FORMS) and all(MASK in json.dumps(r) for r in results)
    contents = [r["response"]["body"]["choices"][0]["message"]["content"] for r in results]
    with contextlib.closing(sqlite3.connect(tmp_path / "answers.db")) as db:
        cached = [row[0] for row in db.execute("SELECT body FROM answers")]
    assert len(cached) == len(set(prompts))  # the same request twice is sent once
    assert leaked([KEY], out, err, *contents, *cached, *_outputs(tmp_path)) == []


# -- credentials judged at configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value", "named"),
    [
        ("key", KEY + "\r\n", "AZURE_OPENAI_API_KEY"),
        ("key", KEY[:5] + "\x1b" + KEY[5:], "AZURE_OPENAI_API_KEY"),
        ("key", KEY + "\u2028", "AZURE_OPENAI_API_KEY"),
        ("header", "Ocp-Apim-Subscription-Key: " + KEY + "\r\nX-Injected: 1", "--header 'Ocp-Apim-Subscription-Key'"),
        ("header", "Ocp-Apim-Subscription-Key: " + KEY + "\r\n", "--header 'Ocp-Apim-Subscription-Key'"),
    ],
)
def test_a_control_character_in_a_credential_is_refused_naming_where_never_what(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], where: str, value: str, named: str
) -> None:
    env, simulator = sim
    args = ["--header", value] if where == "header" else []
    if where == "key":
        env["AZURE_OPENAI_API_KEY"] = value
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    code, out, err = _in_process(tmp_path, env, *args)
    assert code == 2 and named in err and "Traceback" not in err, err
    assert err.count("\n") == 1 and simulator.requests == 0  # one line; nothing sent
    assert leaked([KEY], out, err) == [] and not (tmp_path / "in.results.jsonl").exists()


def test_a_key_pasted_with_its_line_feed_is_used_without_it_and_the_run_says_so(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    env["AZURE_OPENAI_API_KEY"] = KEY + "\n"
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    code, out, err = _in_process(tmp_path, env)
    assert code == 0, err
    assert "AZURE_OPENAI_API_KEY ended with a line feed (\\n), which was removed" in err
    assert simulator.statuses["200"] == 1 and leaked([KEY], out, err) == []


# -- the token command ---------------------------------------------------------------------------------


@pytest.fixture
def entra(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key="unused-key", entra_only=True), monkeypatch) as (env, simulator):
        env.pop("AZURE_OPENAI_API_KEY")
        yield env, simulator


def _group_alive(pgid: int) -> list[int]:
    """The processes still in process group ``pgid`` (read from /proc: no library needed)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(stat.parent.name))
    return alive


def _group_left(pgid: int, within: float = 10.0) -> list[int]:
    """The processes of group ``pgid`` still there once each has had ``within`` s to exit: a SIGKILL is sent at
    once but acted on by the kernel a moment later, so each member's exit is waited for (on its pidfd)."""
    for pid in _group_alive(pgid):
        with contextlib.suppress(OSError):
            fd = os.pidfd_open(pid)
            try:
                select.select([fd], [], [], within)
            finally:
                os.close(fd)
    return _group_alive(pgid)


TIMEOUT = 2.0  # --token-timeout in these tests
CLI = [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress"]


@pytest.mark.parametrize("command", ["exits 3 with a secret on stderr", "prints nothing", "prints CRLF", "sleeps"])
def test_a_token_command_that_fails_ends_the_run_in_one_line_leaving_no_child(
    tmp_path: Path, entra: tuple[dict[str, str], Simulator], command: str
) -> None:
    env, simulator = entra
    pidfile = tmp_path / "group"
    record = f"echo $$ > {pidfile}; "  # the shell's pid: the group's id (a session of its own)
    shell = (
        record
        + {
            "exits 3 with a secret on stderr": f"echo {TOKEN} >&2; exit 3",
            "prints nothing": "true",
            "prints CRLF": f"printf '{TOKEN}\\r\\n'",
            "sleeps": "sleep 1000 & sleep 1000; wait",  # and a child of its own
        }[command]
    )
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    proc = subprocess.run(
        [*CLI, "--token-command", shell, "--token-timeout", str(TIMEOUT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 15,  # the promise: the timeout, and then a few seconds at most
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("asyncbatch: error: --token-command `") and "Traceback" not in proc.stderr
    assert {
        "exits 3 with a secret on stderr": "exited with 3; what it wrote to stderr is not shown",
        "prints nothing": "printed nothing",
        "prints CRLF": "carriage return and a line feed",
        "sleeps": f"did not finish within {TIMEOUT:g} s",
    }[command] in line
    assert leaked([TOKEN], proc.stdout, proc.stderr) == [] and simulator.requests == 0
    assert _group_left(int(pidfile.read_text())) == []
    assert not (tmp_path / "in.results.jsonl.state").exists()  # refused before anything was written


def test_a_token_command_that_leaves_a_helper_in_the_background_is_taken_once_it_exits(
    tmp_path: Path, entra: tuple[dict[str, str], Simulator]
) -> None:
    """Its output is read once the command has exited: a helper it started (``cmd &``) may hold the output open;
    it is killed with the command's group. Before, the run waited for the timeout, then refused the command."""
    env, simulator = entra
    pidfile = tmp_path / "group"
    token = make_token(3600)
    shell = f"echo $$ > {pidfile}; echo {token}; sleep 1000 &"
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    proc = subprocess.run(
        [*CLI, "--token-command", shell, "--token-timeout", "60"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert simulator.requests == 1 and leaked([token], proc.stdout, proc.stderr) == []
    assert _group_left(int(pidfile.read_text())) == []  # the helper did not outlive it


def test_an_interrupt_while_the_token_command_runs_kills_its_group(
    tmp_path: Path, entra: tuple[dict[str, str], Simulator]
) -> None:
    env, _ = entra
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    write_jsonl(tmp_path / "in.jsonl", [batch_line("a", "x")])
    running = subprocess.Popen(
        [*CLI, "--token-command", f"sleep 1000 & echo $$ > {fifo}; wait"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
        reader.start()  # opening a FIFO waits for its writer: the command has started when this returns
        reader.join(timeout=60)
        pgid = int(got[0])
        assert _group_alive(pgid)
        running.send_signal(signal.SIGINT)
        err = running.communicate(timeout=30)[1]
    finally:
        running.kill()
    assert running.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert _group_left(pgid) == [], (_described(_group_alive(pgid)), err)


CANCELLED_WHILE_STARTING = """
import asyncio, contextlib, sys
import uvloop
from asyncbatch.auth import command_provider

async def cancelled(steps, group):
    started = asyncio.ensure_future(command_provider(f"echo $$ > {group}; sleep 1000 & wait").prime())
    for _ in range(steps):
        await asyncio.sleep(0)
    started.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await started

for n, (run, steps) in enumerate((run, steps) for run in (asyncio.run, uvloop.run) for steps in range(8)):
    run(cancelled(steps, f"{sys.argv[1]}/group-{n}"))
"""


def test_a_token_command_cancelled_at_any_step_of_its_start_leaves_nothing_of_its_group(tmp_path: Path) -> None:
    """A Ctrl-C lands while the shell is being started: asyncio then kills the shell alone, and a helper it had
    already started (``helper &``) would stay, and hold the output the cancelled start waits on. Cancelled after
    each of the first loop steps in turn, on asyncio's loop and on uvloop's (the CLI's)."""
    done = subprocess.run(
        [sys.executable, "-c", CANCELLED_WHILE_STARTING, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    groups = [int(text) for path in tmp_path.glob("group-*") if (text := path.read_text().strip())]
    assert groups  # the shell ran in some of them
    assert [pid for group in groups for pid in _group_left(group)] == []


def _described(pids: list[int]) -> list[str]:
    """Each process's /proc stat line and command line: what a group left behind was, if a check fails."""
    described = []
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().strip()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            described.append(f"{stat} | {command!r}")
    return described


# -- SIGHUP ----------------------------------------------------------------------------------------------


def test_sighup_stops_the_run_gracefully_and_the_resume_pays_for_no_answer_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 300
    with simulator_env(SimConfig(api_key=KEY, latency=0.05), monkeypatch) as (env, simulator):
        write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(n)])
        command = [*CLI, "-c", "5"]
        running = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert simulator.first_request.wait(timeout=60)  # the run has started sending
            running.send_signal(signal.SIGHUP)
            err = running.communicate(timeout=60)[1]
        finally:
            running.kill()
        text = err.decode()
        assert running.returncode == 130, text
        assert "asyncbatch summary" in text and "to resume, run the same command again" in text
        done = len(read_jsonl(tmp_path / "in.results.jsonl"))
        assert 0 < done < n  # stopped in the middle, with what was answered recorded
        again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
    ids = sorted(r["custom_id"] for r in read_jsonl(tmp_path / "in.results.jsonl"))
    assert ids == sorted(f"r{i}" for i in range(n))
    assert simulator.billed_twice() == 0 and simulator.statuses["200"] == n


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.parametrize("when", [0.0, 0.3])
def test_sighup_while_starting_up_exits_130_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: float
) -> None:
    """Right after asyncbatch's handlers are in (importing, building the configuration, opening the outputs)."""
    with simulator_env(SimConfig(api_key=KEY, latency=0.05), monkeypatch) as (env, _):
        write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"p{i}") for i in range(50)])
        running = subprocess.Popen(CLI, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while not _catches(running.pid, signal.SIGHUP):
                assert running.poll() is None
                time.sleep(0.001)  # a poll of the process's state, not a wait for time to pass
            time.sleep(when)  # the instant of the signal, not a wait for anything
            running.send_signal(signal.SIGHUP)
            err = running.communicate(timeout=60)[1].decode()
        finally:
            running.kill()
    assert running.returncode == 130 and "interrupted" in err and "Traceback" not in err, err


class _HungUp(io.StringIO):
    """A terminal after its SSH session closed: every write fails with EIO."""

    def write(self, text: str) -> int:
        raise OSError(5, "Input/output error")


def test_a_terminal_that_hung_up_is_written_to_no_more_and_raises_nothing() -> None:
    stream = RedactingStream(_HungUp(), Redactor([KEY]))
    assert stream.write(f"summary {KEY}\n") == len(f"summary {KEY}\n")
    assert stream.gone
    stream.write("more")
    stream.flush()


def test_a_refresh_that_fails_keeps_the_live_token_and_tries_again_until_it_would_expire() -> None:
    clock = FakeClock(1000.0)
    answers: list[str | Exception] = [make_token(400, now=1000.0)]

    def provider() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    tokens = Tokens(provider, clock=clock)
    first = asyncio.run(tokens.get())
    answers += [ConfigError("--token-command `az ...` exited with 1")] * 2
    clock.now = 1310.0  # a quarter of its life left: refreshed, and the command fails
    assert asyncio.run(tokens.get()) == first  # 90 s to live: kept
    clock.now = 1320.0  # tried again 30 s later, not before
    assert asyncio.run(tokens.get()) == first and len(answers) == 1
    clock.now = 1345.0  # 55 s to live: fails again, kept again
    assert asyncio.run(tokens.get()) == first and answers == []
    answers.append(ConfigError("--token-command `az ...` exited with 1"))
    clock.now = 1380.0  # 20 s to live: no longer worth keeping
    with pytest.raises(FatalAPIError, match="exited with 1") as raised:
        asyncio.run(tokens.get())
    assert raised.value.kind == "token"


@pytest.mark.parametrize("kind", ["azure", "openai"])
def test_an_endpoint_refused_for_its_query_string_is_named_without_it(kind: str) -> None:
    """A SAS-style signature in the query (``?sig=...``) is refused, and the message does not repeat it."""
    from asyncbatch.cli.endpoints import check_base_url

    with pytest.raises(ConfigError) as refused:
        check_base_url("https://h.example/v1?code=QSECRETvalue99&sig=abc#frag", kind, "OPENAI_BASE_URL")
    assert "QSECRETvalue99" not in str(refused.value) and "abc" not in str(refused.value)
    assert "https://h.example/v1" in str(refused.value) and "query string" in str(refused.value)
