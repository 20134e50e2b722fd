"""Every hint the CLI prints does what it says: each printed command is run, as printed, in a scratch directory.

A hint is pasted, not read: it must never pay twice (a resume hint never repeats ``--restart``,
``--retry-failed``, ``--cancel`` or ``--accept-changes``), never write over its own input (``jq ... x.jsonl >
x.jsonl`` empties the file before jq reads it), and then do what it promised. ``HINTS`` lists every hint in
the package by a fragment of its text, with the test that runs it or why there is nothing to run; a hint
added to the package fails ``test_every_hint_in_the_package_is_run_by_a_test_or_is_advice`` until it is listed.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from asyncbatch.cli.main import main, resume_command
from asyncbatch.simulator import SimConfig, Simulator
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl
from tests.scripted import Answer, Received, completion, nested, serve

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "asyncbatch"
KEY = "hint-key-0123456789"
ADVICE = "advice: nothing to paste"

# fragment of the hint's text -> the test that runs what it says (file::name), or why there is nothing to run
HINTS = {
    # commands and options to paste: run by a test
    "run again with --retry-failed to ask again": "tests/test_hints.py::test_the_retry_failed_hint_asks_again",
    "convert it with": "tests/test_hints.py::test_the_iconv_hint_converts_without_touching_the_input",
    "jq -c '.[]'": "tests/test_hints.py::test_the_jq_hint_converts_without_writing_over_its_input",
    "HINT: name it": "tests/test_hints.py::test_the_csv_hint_names_the_file_so_it_runs",
    "and pass --deployment": "tests/test_hints.py::test_the_full_url_hints_give_values_that_run",
    "HINT: set {name}={shown(value[:cut])}": "tests/test_hints.py::test_the_full_url_hints_give_values_that_run",
    "move it aside (`{moved}`)": (
        "tests/test_cache.py::test_a_cache_damaged_in_its_middle_is_named_with_what_to_do_by_a_run_and_by_cache_stats"
    ),
    "HINT: restore it from a backup": "tests/test_batch_answers.py::test_the_hint_for_a_damaged_batches_file_runs",
    "call map again with the same output_path": (
        "tests/test_frames.py::test_a_run_stopped_early_returns_every_row_in_input_order_and_the_hint_runs_the_rest"
    ),
    "HINT: another output_path asks every row again": (
        "tests/test_frames.py::test_rows_answered_before_a_validator_was_added_come_back_unparsed_with_a_warning_never_a_traceback"
    ),
    "HINT: point AZURE_OPENAI_ENDPOINT at the": ADVICE + " (the endpoint that made the job, or --restart)",
    "HINT: give a file of one name": ADVICE + " (a file to remove or rename)",
    "HINT: the workers' logs (Ray's or Spark's)": ADVICE + " (logs to read)",
    "HINT: sign in": ADVICE + " (az login: the user's own sign-in)",
    "fill them in (the Azure portal": (
        "tests/test_first_hour.py::test_a_copy_of_env_example_not_yet_filled_in_is_named_and_the_hint_runs"
    ),
    "HINT: set it to http://host:port, or unset it": ADVICE + " (the user's own proxy)",
    "HINT: something between you and the model": ADVICE + " (a gateway's owner to ask)",
    "if that endpoint is yours, set": (
        "tests/test_security_secrets.py::test_the_hint_for_an_endpoint_a_dotenv_file_alone_names_runs"
    ),
    "add --batch-api to collect their results": (
        "tests/test_batchapi.py::"
        "test_ctrl_c_leaves_the_jobs_running_cancel_cancels_them_and_a_rerun_finishes_exactly_once"
    ),
    "HINT: on a local Spark, set ": (  # its fixture runs every job with PYSPARK_PYTHON set so, as the hint says
        "tests/test_spark.py::test_on_a_local_spark"
    ),
    "pass {RETRY_FAILED} to run every failed {unit} again": (
        "tests/test_hints.py::test_the_hint_for_a_failed_line_edited_in_place_runs_it_as_it_is_now"
    ),
    "or pass {ACCEPT_CHANGES} to run the remaining lines": (
        "tests/test_mistakes.py::test_changed_options_after_successes_are_refused_unless_accepted"
    ),
    "outputs of its own ({OUTPUT_PATH}": (
        "tests/test_tables.py::test_outputs_of_another_input_are_refused_naming_it_and_what_to_do"
    ),
    # advice: a value to choose, a file to fix, a package to install, a cause to look into
    "use the v1 API": ADVICE + " (a URL with the user's own resource name)",
    "remove the user:password@ part": ADVICE,
    'pip install "asyncbatch[report]"': ADVICE + " (an install)",
    'pip install "asyncbatch[entra]"': ADVICE + " (an install)",
    "give the results file of a": ADVICE,
    "choose another port": ADVICE,
    "HINT: {hint}": ADVICE + " (fatal_hint's words, and --template's example, checked in test_mistakes)",
    "fields are {shown}: name those in": ADVICE,
    "json.dumps(row)": ADVICE,
    "set it again with the value alone": ADVICE,
    "set it in the environment or in .env": ADVICE,
    "HINT: set it to the": ADVICE + " (the endpoint's URL alone)",
    "HINT: run again": ADVICE + " (the same command)",
    "append the corrected {unit} with {own}": ADVICE + " (an edit of the input)",
    "did you mean": ADVICE + " (a guess at the scheme: the user knows whether it is https)",
    "wait for it to finish, or stop it": ADVICE,
    "give the target's own path, or remove the link": ADVICE,
    "choose another file name, or move that file away": ADVICE,
    "remove the link (its target is left alone)": ADVICE,
    "choose another output name, or move the file aside": ADVICE,
    "restore the original file, or start over with": ADVICE,
    "fix the cause (space, permissions)": ADVICE,
    "give --cache a path of its own": ADVICE,
    "give the path of an existing cache": ADVICE,
    "give --cache a file's path": ADVICE,
    "upgrade asyncbatch, or give --cache another path": ADVICE,
    "--cache-mode read uses a cache it cannot write to": ADVICE,
    "this input plus max_tokens is longer": ADVICE,
    "raise --max-response-mb": ADVICE,
    "raise --max-tokens": ADVICE,
    "run it yourself to see": ADVICE,
    "it must print the token alone": ADVICE,
    "a field is written": ADVICE,
    "may be the run's input: its results are": ADVICE + " (the results file to give report instead)",
    "choose another file name with -o": ADVICE,
    "HINT: make the file readable": ADVICE,
    "HINT: write it again from its source": ADVICE + " (a file to write again)",
    "HINT: write the file again from its source": ADVICE + " (a file to write again)",
    "HINT: fix the header, or save the file as": ADVICE,
    "HINT: fix row": ADVICE + " (an edit of the input)",
    "asyncbatch reads UTF-8. HINT: {todo}": ADVICE + " (a file to save again, or a Parquet file to write again)",
    "a run keeps a regular file there. HINT: move it away": ADVICE,
    "HINT: save the sheet as CSV UTF-8": ADVICE + " (a file to save again)",
    "HINT: run the same job again later": ADVICE + " (the same job)",
    "HINT: {_header_hint(": ADVICE + " (a template, or a header row, to write)",
}


def _hint_sites() -> list[tuple[Path, int, str]]:
    """Every place in the package that prints a hint: (file, line, and the lines around it)."""
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "HINT:" in line:
                sites.append((path, i + 1, "\n".join(lines[max(0, i - 5) : i + 3])))
    return sites


def test_every_hint_in_the_package_is_run_by_a_test_or_is_advice() -> None:
    sites = _hint_sites()
    assert len(sites) > 30
    unlisted = [f"{p.relative_to(REPO)}:{n}" for p, n, text in sites if not any(k in text for k in HINTS)]
    assert unlisted == [], "a new hint: run it in a test, or list it as advice in HINTS"
    everywhere = "\n".join(text for _, _, text in sites)
    assert [k for k in HINTS if k not in everywhere] == []  # no stale entry
    for where in {w for w in HINTS.values() if "::" in w}:
        file, name = where.split("::")
        assert f"def {name}(" in (REPO / file).read_text(), where


# -- the resume hint ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--restart", "--retry-failed", "--accept-changes", "--cancel"])
@pytest.mark.parametrize("spelled", ["whole", "abbreviated"])
def test_the_resume_hint_never_repeats_an_option_that_acts_once(flag: str, spelled: str) -> None:
    given = flag[:7] if spelled == "abbreviated" else flag  # argparse takes a unique prefix: --resta, --cance
    command = resume_command(["in.jsonl", given, "-c", "4", "--header", "Ocp-Apim-Subscription-Key: s3cret"])
    words = shlex.split(command.splitlines()[0])
    assert words[-5:] == ["in.jsonl", "-c", "4", "--header", "Ocp-Apim-Subscription-Key: <your value>"]
    assert given not in words and "s3cret" not in command


def test_the_resume_hint_keeps_every_other_option() -> None:
    argv = ["in.jsonl", "-c", "4", "--cache-mode", "write", "--max-cost", "2", "--template", "--restart {x}"]
    words = shlex.split(resume_command(argv))
    assert words[-len(argv) :] == argv  # a value that looks like an option is a value


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY, latency=0.02), monkeypatch) as served:
        yield served


def _rows(start: int, n: int) -> list[dict]:
    return [batch_line(f"r{i}", f"prompt {i}", max_tokens=20) for i in range(start, start + n)]


def _printed_resume(err: str) -> str:
    found = re.search(r"to resume, run [^\n]*:\n  (.+)", err)
    assert found is not None, err
    return found[1]


def _interrupted(cwd: Path, env: dict[str, str], *args: str, after: int) -> str:
    """Run the CLI as a user would, press Ctrl-C once ``after`` more results are in; its stderr."""
    results = cwd / "in.results.jsonl"
    before = _count(results)
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncbatch", "in.jsonl", "--no-progress", "-c", "2", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while _count(results) < before + after and proc.poll() is None:  # a condition, polled: not a guess at time
        os.sched_yield()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    return err


def _count(path: Path) -> int:
    """Lines of ``path`` now, 0 if there is none: --restart may move it aside between a look and a read."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("flag", ["--restart", "--retry-failed", "--accept-changes"])
def test_ctrl_c_in_a_run_with_a_one_time_option_prints_a_hint_that_resumes_and_pays_for_nothing_twice(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], flag: str
) -> None:
    env, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _rows(0, 40))
    simulator.config.script.update({f"prompt {i}": ["400"] for i in range(3)})  # 3 failures, once each
    assert main([str(tmp_path / "in.jsonl"), "-q", "--max-tokens", "20"]) == 1
    with (tmp_path / "in.jsonl").open("a") as f:  # more lines, so the second run has work to interrupt
        f.writelines(json.dumps(row) + "\n" for row in _rows(40, 300))
    simulator.config.script.update({f"prompt {i}": ["400"] for i in range(40, 43)})  # failures of the second run
    options = ["--max-tokens", "30"] if flag == "--accept-changes" else ["--max-tokens", "20"]

    err = _interrupted(tmp_path, env, *options, flag, after=60)
    hint = _printed_resume(err)
    assert flag not in shlex.split(hint) and "--max-tokens" in hint
    asked = simulator.requests
    recorded = {r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl") + _errors(tmp_path)}
    moved = sorted(p.name for p in tmp_path.iterdir() if ".results" in p.name)

    done = subprocess.run(hint, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # finished: the second run's three failures stay failures
    lines = [r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl") + _errors(tmp_path)]
    assert sorted(lines) == list(range(1, 341))  # every line exactly once
    assert simulator.requests - asked == 340 - len(recorded)  # only the lines not yet recorded were sent
    assert sorted(p.name for p in tmp_path.iterdir() if ".results" in p.name) == moved  # nothing moved aside again
    kept = {"r0", "r1", "r2"} if flag == "--accept-changes" else set()  # the first run's, not asked again
    assert {e["custom_id"] for e in _errors(tmp_path)} == {"r40", "r41", "r42"} | kept


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _in_terminal(argv: list[str], cwd: Path, columns: int, *, interrupt_after: int | None = None) -> tuple[int, str]:
    """Run ``argv`` on a terminal ``columns`` wide (Ctrl-C once ``interrupt_after`` results are in): its exit
    code and what it printed, line by line as a copy from the terminal gives it (a soft-wrapped line is one)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    printed = bytearray()
    try:
        while True:
            if interrupt_after is not None and _count(cwd / "in.results.jsonl") >= interrupt_after:
                proc.send_signal(signal.SIGINT)
                interrupt_after = None
            ready, _, _ = select.select([master], [], [], 0.05)  # polls the results file between reads
            try:
                data = os.read(master, 65536) if ready else b"-"
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            printed += data if ready else b""
    finally:
        os.close(master)
        proc.wait(timeout=60)
    text = ANSI.sub("", printed.decode(errors="replace"))
    return proc.returncode, "\n".join(line.rpartition("\r")[2] for line in text.split("\r\n"))


@pytest.mark.parametrize("columns", [60, 80])
@pytest.mark.parametrize("stop", ["max-cost", "ctrl-c"])
def test_a_printed_command_is_one_line_on_a_narrow_terminal_and_pasted_is_the_whole_command(
    tmp_path: Path, columns: int, stop: str
) -> None:
    """A command folded at the terminal's width runs its first line alone when pasted: without the options
    after the fold (no --max-cost). Every printed command is one line, whole, whatever the width."""
    write_jsonl(tmp_path / "in.jsonl", _rows(0, 200))
    given = ["in.jsonl", "--simulate", "--sim-latency-ms", "20", "-c", "2", "--max-tokens", "20"]
    given += ["--price-in", "1", "--price-out", "2", "--header", "X-Gateway-Key: s3cret-value", "--restart"]
    given += ["--max-cost", "0.00005"] if stop == "max-cost" else ["--max-cost", "10"]
    prog = [sys.executable, "-m", "asyncbatch"]
    code, printed = _in_terminal([*prog, *given], tmp_path, columns, interrupt_after=5 if stop == "ctrl-c" else None)
    assert code == (75 if stop == "max-cost" else 130), printed
    commands = [line for line in printed.splitlines() if line.strip().startswith(sys.executable)]
    assert len(commands) == 1, printed
    pasted = commands[0]
    words = shlex.split(pasted)
    expected = [w for w in given if w != "--restart"]
    expected[expected.index("X-Gateway-Key: s3cret-value")] = "X-Gateway-Key: <your value>"
    assert words == [*prog, *expected]  # the whole command, on the one line a paste takes
    assert subprocess.run(["bash", "-n", "-c", pasted], timeout=30).returncode == 0
    said = " ".join(printed.split())  # the words, however folded
    assert "without --restart, which acts once" in said and "X-Gateway-Key header(s)" in said
    assert "s3cret" not in printed
    if stop == "max-cost":
        assert "--max-cost 0.00005 USD reached" in said  # as typed, not 5e-05


def _errors(tmp_path: Path) -> list[dict]:
    return read_jsonl(tmp_path / "in.results.errors.jsonl")


def test_the_hint_after_cancel_collects_and_finishes_without_cancelling_again(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    env, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _rows(0, 30))
    assert main([str(tmp_path / "in.jsonl"), "--batch-api", "--cancel", "--poll-interval", "0.05"]) == 75
    hint = _printed_resume(capsys.readouterr().err)
    assert "--cancel" not in shlex.split(hint) and "--batch-api" in hint
    path = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}  # `asyncbatch` on PATH
    done = subprocess.run(hint, shell=True, cwd=tmp_path, env=path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == list(range(1, 31))
    assert simulator.batches.created == 1 and all(job.cancel_at is None for job in simulator.batches.jobs.values())


# -- hints about the input file ----------------------------------------------------------------


def _asyncbatch_path() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _quoted_command(err: str) -> str:
    found = re.search(r"`([^`]+)`", err)
    assert found is not None, err
    return found[1]


def _simulated(path: Path) -> tuple[int, list[dict]]:
    code = main([str(path), "-q", "--simulate", "--sim-latency-ms", "0"])
    return code, read_jsonl(path.with_name(path.stem + ".results.jsonl"))


CHAT = [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(5)]


@pytest.mark.parametrize("name", ["x.jsonl", "x.json", "my data.jsonl"])
def test_the_jq_hint_converts_without_writing_over_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    given = tmp_path / name
    given.write_text(json.dumps(CHAT, indent=2))
    original = given.read_bytes()
    assert main([str(given), "-q", "--simulate"]) == 2
    command = _quoted_command(capsys.readouterr().err)
    assert command.startswith("jq -c '.[]' ")
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=60)
    assert given.read_bytes() == original  # the input is as it was
    made = Path(shlex.split(command)[-1])
    assert made != given and made.parent == given.parent
    code, results = _simulated(made)
    assert code == 0 and sorted(r["custom_id"] for r in results) == [f"c{i}" for i in range(5)]


def test_the_jq_hint_writes_over_no_other_file_either(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    given, other = tmp_path / "x.json", tmp_path / "x.jsonl"
    given.write_text(json.dumps(CHAT))
    other.write_text("mine\n")
    assert main([str(given), "-q", "--simulate"]) == 2
    command = _quoted_command(capsys.readouterr().err)
    assert shlex.split(command)[-1] not in (str(given), str(other))


def test_the_iconv_hint_converts_without_touching_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    given = tmp_path / "x.jsonl"
    given.write_bytes("".join(json.dumps(row) + "\n" for row in CHAT).encode("utf-16"))
    original = given.read_bytes()
    assert main([str(given), "-q", "--simulate"]) == 2
    command = _quoted_command(capsys.readouterr().err)
    assert command.startswith("iconv ")
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=60)
    assert given.read_bytes() == original
    code, results = _simulated(Path(shlex.split(command)[-1]))
    assert code == 0 and len(results) == 5


def test_the_csv_hint_names_the_file_so_it_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    given = tmp_path / "x.jsonl"
    given.write_text("id,company\n1,Contoso\n2,Fabrikam\n")
    assert main([str(given), "-q", "--simulate", "--template", "About {company}"]) == 2
    name = re.search(r"HINT: name it (\S+):", capsys.readouterr().err)
    assert name is not None
    renamed = given.rename(tmp_path / name[1])
    assert main([str(renamed), "-q", "--simulate", "--template", "About {company}"]) == 0
    assert len(read_jsonl(tmp_path / f"{name[1]}.results.jsonl")) == 2


# -- hints about the endpoint and the answers ----------------------------------------------------


def test_the_full_url_hints_give_values_that_run(
    tmp_path: Path,
    sim: tuple[dict[str, str], Simulator],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, _ = sim
    base = env["AZURE_OPENAI_ENDPOINT"]
    write_jsonl(tmp_path / "in.jsonl", _rows(0, 3))
    monkeypatch.delenv("AZURE_OPENAI_DEPLOYMENT_NAME")
    pasted = f"{base}/openai/deployments/dep/chat/completions?api-version=2024-10-21"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", pasted)
    assert main([str(tmp_path / "in.jsonl"), "-q"]) == 2
    said = re.search(r"HINT: set AZURE_OPENAI_ENDPOINT=(\S+) and pass (.+)$", capsys.readouterr().err.strip())
    assert said is not None
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", said[1])
    assert main([str(tmp_path / "in.jsonl"), "-q", *shlex.split(said[2])]) == 0

    monkeypatch.setenv("OPENAI_BASE_URL", f"{base}/v1/chat/completions")  # the OpenAI mode's message
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_MODEL", "m")
    for name in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(name)
    assert main([str(tmp_path / "in.jsonl"), "-q", "-o", str(tmp_path / "openai.jsonl")]) == 2
    said = re.search(r"HINT: set OPENAI_BASE_URL=(\S+)", capsys.readouterr().err)
    assert said is not None
    monkeypatch.setenv("OPENAI_BASE_URL", said[1])
    assert main([str(tmp_path / "in.jsonl"), "-q", "-o", str(tmp_path / "openai.jsonl")]) == 0


def test_the_retry_failed_hint_asks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str] = []

    def script(request: Received) -> Answer:  # the first answer is nested too deep to keep; the next is fine
        asked.append(request.prompt)
        body = completion(extra=b'"deep": ' + nested(200)) if len(asked) == 1 else completion("fine")
        return Answer(200, body, request_id=f"id-{len(asked)}")

    with serve(script) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
        write_jsonl(tmp_path / "in.jsonl", _rows(0, 1))
        assert main([str(tmp_path / "in.jsonl"), "-q"]) == 1
        (error,) = _errors(tmp_path)
        assert "HINT: run again with --retry-failed to ask again" in error["error"]["message"]
        assert main([str(tmp_path / "in.jsonl"), "-q", "--retry-failed"]) == 0
    assert _errors(tmp_path) == [] and [r["output"] for r in read_jsonl(tmp_path / "in.results.jsonl")] == ["fine"]
    assert len(asked) == 2
    assert orjson.loads(server.received[-1].body)["messages"][0]["content"] == "prompt 0"


def test_a_run_with_failed_lines_ends_with_the_command_that_asks_them_again_and_it_does(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 ended on the outputs' names alone: the way to ask the failed lines again was the user's to find."""
    env, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _rows(0, 30))
    simulator.config.script.update({f"prompt {i}": ["400"] for i in range(3)})  # 3 failures, once each
    assert main([str(tmp_path / "in.jsonl"), "--no-progress", "--max-tokens", "20"]) == 1
    found = re.search(r"3 lines failed: why, in [^\n]*run:\n  (.+)", capsys.readouterr().err)
    assert found is not None
    asked = simulator.requests
    path = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}  # `asyncbatch` on PATH
    done = subprocess.run(found[1], shell=True, cwd=tmp_path, env=path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _errors(tmp_path) == [] and sorted(r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == list(
        range(1, 31)
    )
    assert simulator.requests - asked == 3 and "lines failed" not in done.stderr  # the three alone, asked again


def test_the_hint_for_a_failed_line_edited_in_place_runs_it_as_it_is_now(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    simulator.config.script.update({"prompt 1": ["400"]})
    path = write_jsonl(tmp_path / "in.jsonl", _rows(0, 3))
    assert main([str(path), "-q"]) == 1
    rows = _rows(0, 3)
    rows[1]["body"]["messages"][0]["content"] = "prompt 1, corrected"
    write_jsonl(path, rows)
    assert main([str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "changed at line 2, and it failed after being sent" in err and "HINT: pass --retry-failed" in err
    assert main([str(path), "-q", "--retry-failed"]) == 0
    assert simulator.bodies[-1]["messages"][0]["content"] == "prompt 1, corrected"
    assert sorted(r["line"] for r in read_jsonl(tmp_path / "in.results.jsonl")) == [1, 2, 3] and _errors(tmp_path) == []
