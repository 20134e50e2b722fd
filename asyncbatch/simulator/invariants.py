"""What must always hold, written once: a checker that tests and benchmarks share.

A run of the CLI (with its resumes) against any server behaviour must:

* record every input line in exactly one whole line of the results or the errors;
* record every answer the server counted as a success (by its request id), unless the client asked
  for that input again in the same run (a malformed or invalid answer), or that run was killed;
* end (exit 0 or 1), or stop resumably (exit 75), within a bound set by the caller from
  the server's behaviour: a run past it has stalled, whether idle or not;
* never print a traceback or an internal error, nor exit with a code the documentation does not give;
* never give up on a reachable server (exit 2) when nothing is misconfigured;
* stay under a peak memory bound, whatever the server sends;
* never write or print a secret.

``Schedule`` is one seeded, reproducible draw of hostile server behaviour
(``chaos.py``'s catalogue, outages, a pool member that dies, a kill -9 point);
``play`` runs it through the CLI against simulators on 127.0.0.1 and returns
every violation. Nothing here imports the client's policy: it reads files and
exit codes, as a user would.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chaos import HOSTILE
from .server import Asked, serve_in_thread
from .settings import SimConfig

DOCUMENTED_EXITS = {0, 1, 2, 75, 130}
RESUMABLE = (75, 130)  # stopped early: the same command goes on where it stopped
KEY = "chaos-secret-key-7d1c9a"  # planted: it must appear in no byte the run writes or prints
APIS = ("chat", "embeddings", "responses")
# Responses lines need an api-version with the route (on the default 2024-10-21 the whole file is refused at
# configuration, exit 2, rightly): a schedule of them runs with this one, the first classic version that has it
RESPONSES_ARGS = ("--api-version", "2025-04-01-preview")
FAULT_MENU = ("500", "503", "reset", "hang", "garbage", "malformed", "schema", *HOSTILE)


@dataclass
class Run:
    code: int | None  # None: killed by the harness (kill -9), or past its bound
    seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    killed: bool = False
    timed_out: bool = False
    started: float = 0.0  # time.monotonic() when it began and ended: which answers it was given
    ended: float = float("inf")


# A process's peak memory on Linux starts at its parent's resident size when it was forked: a CLI
# started straight from a large pytest worker (one that has run Ray or Spark) would report that
# worker's size. This small launcher forks the run, so the run's peak is its own, and reports the
# run's pid (for kill -9) and then its wait4 usage and status on a pipe.
_LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
os.write(fd, b"%d\\n" % pid)
_, status, usage = os.wait4(pid, 0)
os.write(fd, b"%d %d\\n" % (usage.ru_maxrss, os.waitstatus_to_exitcode(status)))
"""


def run_cli(args: list[str], cwd: Path, env: dict[str, str], *, bound: float, kill_after: float | None = None) -> Run:
    """One CLI run; kill -9 at ``kill_after`` seconds, or when it passes ``bound`` (then ``timed_out``)."""
    started = time.monotonic()
    report, child_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(child_end), "-m", "asyncbatch", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(child_end,),
    )
    os.close(child_end)
    with os.fdopen(report, "rb") as reports:
        pid = int(reports.readline())
        out: dict[str, bytes] = {}
        readers = [
            threading.Thread(target=lambda name=name, pipe=pipe: out.__setitem__(name, pipe.read()))
            for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for reader in readers:
            reader.start()
        why: list[str] = []

        def kill(reason: str) -> None:
            why.append(reason)
            os.kill(pid, signal.SIGKILL)

        timers = [threading.Timer(bound, kill, ("bound",))]
        if kill_after is not None:
            timers.append(threading.Timer(kill_after, kill, ("kill",)))
        for timer in timers:
            timer.start()
        maxrss_kb, code = (int(word) for word in reports.readline().split())
    proc.wait()
    for timer in timers:
        timer.cancel()
    for reader in readers:
        reader.join()
    for pipe in (proc.stdout, proc.stderr):
        assert pipe is not None
        pipe.close()
    killed = bool(why) and code == -signal.SIGKILL
    ended = time.monotonic()
    return Run(
        code=None if killed else code,
        seconds=ended - started,
        peak_rss_mb=maxrss_kb / 1024,
        stdout=out.get("stdout", b"").decode(errors="replace"),
        stderr=out.get("stderr", b"").decode(errors="replace"),
        killed=killed and why[0] == "kill",
        timed_out=killed and why[0] == "bound",
        started=started,
        ended=ended,
    )


def run_to_the_end(
    args: list[str], cwd: Path, env: dict[str, str], *, bound: float, kill_after: float | None = None, most: int = 12
) -> list[Run]:
    """Run, then resume with the same command after every kill -9 or exit 75, as a user would."""
    runs = [run_cli(args, cwd, env, bound=bound, kill_after=kill_after)]
    while len(runs) < most and (runs[-1].killed or runs[-1].code == 75):
        runs.append(run_cli(args, cwd, env, bound=bound))
    return runs


def violations(
    runs: list[Run],
    *,
    input_path: Path,
    results_path: Path,
    errors_path: Path,
    secrets: list[str],
    max_rss_mb: float,
    allow_fatal: bool = False,
    journal: Sequence[Asked] = (),
) -> list[str]:
    """Every invariant the runs broke, said in a line each; [] when all hold.

    :param journal: what the servers were asked and which successes they gave (``SimConfig.journal``).
    """
    found: list[str] = []
    for number, run in enumerate(runs, 1):
        found += run_problems(number, run, max_rss_mb)
    last = runs[-1]
    if not last.killed and not last.timed_out and last.code not in ((0, 1, 2) if allow_fatal else (0, 1)):
        found.append(f"the last run ended with exit {last.code}, not 0 or 1: {_tail(last.stderr)}")
    found += exactly_once(input_path, results_path, errors_path)
    found += paid_answers_lost(journal, runs, recorded_ids(results_path, errors_path))
    found += secrets_found(secrets, [results_path.parent], runs)
    return found


def recorded_ids(*paths: Path) -> set[str]:
    """The request ids of every answer in the outputs (results and errors alike)."""
    found = set()
    for path in paths:
        for raw in path.read_bytes().splitlines() if path.exists() else []:
            try:
                response = json.loads(raw).get("response")
            except (ValueError, AttributeError):
                continue
            if isinstance(response, dict) and isinstance(response.get("request_id"), str):
                found.add(response["request_id"])
    return found


def paid_answers_lost(journal: Sequence[Asked], runs: list[Run], recorded: set[str]) -> list[str]:
    """Every success the server gave that is in no output, though its run went on and never asked again."""
    lost = [f"{entry.request_id} ({entry.key[:40]!r})" for entry in lost_answers(journal, runs, recorded)]
    if not lost:
        return []
    return [f"{len(lost)} answers the server gave as successes are in no output (e.g. {', '.join(lost[:3])})"]


def lost_answers(journal: Sequence[Asked], runs: list[Run], recorded: set[str]) -> list[Asked]:
    """The successes the server gave that no output holds, when nothing excuses it.

    A run killed with -9 may lose what was on its way (the resume pays for it again); a run that asked
    for the same input again after an answer (malformed, or breaking the schema) replaced it. A broken
    answer (the server knows it served a fault) whose asking again a stop cut short is asked again by
    the resume: that replaces it too. A sound answer is never excused so.
    """
    asked_at: dict[str, list[float]] = {}
    for entry in journal:
        asked_at.setdefault(entry.key, []).append(entry.at)
    lost = []
    for entry in journal:
        if entry.request_id is None or entry.request_id in recorded:
            continue
        run = next((r for r in runs if r.started <= entry.at <= r.ended), None)
        if run is None or run.killed:
            continue
        until = math.inf if entry.broken and run.code in RESUMABLE else run.ended
        if not any(entry.at < later <= until for later in asked_at[entry.key]):
            lost.append(entry)
    return lost


def run_problems(number: int, run: Run, max_rss_mb: float) -> list[str]:
    """What one run broke: its bound, a code the documentation does not give, a traceback, its memory bound."""
    found = []
    if run.timed_out:
        found.append(f"run {number} did not end within its bound ({run.seconds:.0f} s): {_tail(run.stderr)}")
    elif not run.killed and run.code not in DOCUMENTED_EXITS:
        found.append(f"run {number} exited {run.code}, a code the documentation does not give: {_tail(run.stderr)}")
    for words in ("Traceback", "internal error"):
        if words in run.stderr or words in run.stdout:
            found.append(f"run {number} printed {words!r}: {_tail(run.stderr)}")
    if run.peak_rss_mb > max_rss_mb:
        found.append(f"run {number} peaked at {run.peak_rss_mb:.0f} MB, over {max_rss_mb:.0f} MB")
    return found


def exactly_once(input_path: Path, results_path: Path, errors_path: Path) -> list[str]:
    """Every non-blank input line in exactly one whole line of the results or the errors."""
    expected = {n for n, line in enumerate(input_path.read_bytes().splitlines(), 1) if line.strip()}
    seen: Counter[int] = Counter()
    found = []
    for path in (results_path, errors_path):
        for number, raw in enumerate(path.read_bytes().splitlines() if path.exists() else [], 1):
            try:
                seen[int(json.loads(raw)["line"])] += 1
            except (ValueError, KeyError, TypeError):
                found.append(f"{path.name}:{number} is not a whole record: {raw[:80]!r}")
    missing, doubled = expected - set(seen), sorted(n for n, c in seen.items() if c > 1)
    if missing:
        found.append(f"{len(missing)} input lines recorded nowhere (e.g. {sorted(missing)[:5]})")
    if doubled:
        found.append(f"{len(doubled)} input lines recorded more than once (e.g. {doubled[:5]})")
    if stray := set(seen) - expected:
        found.append(f"records for lines the input does not have: {sorted(stray)[:5]}")
    return found


def secrets_found(secrets: list[str], folders: list[Path], runs: list[Run]) -> list[str]:
    """Where any of ``secrets`` appears: a file under ``folders``, or what a run printed."""
    found = []
    texts = {f"run {i} output": (r.stdout + r.stderr).encode() for i, r in enumerate(runs, 1)}
    for folder in folders:
        texts.update({str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    for secret in filter(None, secrets):
        found += [
            f"the secret {secret[:4]}… appears in {where}" for where, data in texts.items() if secret.encode() in data
        ]
    return found


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


# -- schedules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """One draw of hostile behaviour; the same schedule plays the same way (seeded)."""

    seed: int = 0
    faults: dict[str, float] = field(default_factory=dict)  # fault name (``FAULT_MENU``) -> share of requests
    api: str = "chat"
    lines: int = 60
    outage: tuple[float, float] | None = None  # (start, seconds) after the first request
    window: str = "azure"  # or "minute": fixed windows, 429s with no hints
    tpm: int | None = None
    pool: bool = False  # two deployments, each its own server ...
    dies_after: float | None = None  # ... the second of which is down for good from this many seconds
    kill_after: float | None = None  # kill -9 the first run this many seconds in, then resume
    huge_bytes: int = 8 * 1024 * 1024
    args: tuple[str, ...] = ()  # CLI options after ``ARGS`` (the later wins)

    def sim(self, index: int = 0) -> SimConfig:
        outages = [self.outage] if self.outage and index == 0 else []
        if index == 1 and self.dies_after is not None:
            outages.append((self.dies_after, 1e9))
        return SimConfig(
            api_key=KEY,
            journal=True,
            seed=self.seed * 7 + index,
            fault_rates=dict(self.faults),
            hang_seconds=3.0,
            outages=tuple(outages),
            window="minute" if self.window == "minute" else "azure",
            window_seconds=2.0,
            tpm=self.tpm,
            huge_bytes=self.huge_bytes,
            slow_seconds=0.4,
        )

    def bound(self) -> float:
        """How long one run may take at most, from the server's behaviour: a stall is past it.

        Hint-less 429s say "too many requests" and nothing else: a client is right to slow down for
        them (the adaptive rate settles at a few requests a second against 8% of them), so they
        lengthen the bound.
        """
        outage = self.outage[1] if self.outage else 0.0
        refusals = 60.0 if "429-nohint" in self.faults else 0.0
        return 45.0 + outage + refusals + (10.0 if self.window == "minute" else 0.0)


def draw(rng: random.Random) -> Schedule:
    """A random schedule, for benchmarks (the property test draws its own with hypothesis)."""
    chosen = rng.sample(FAULT_MENU, rng.randint(1, 5))
    faults = {name: round(rng.uniform(0.01, 0.12), 3) for name in chosen}
    pool = rng.random() < 0.25
    seed, api = rng.randrange(1 << 30), rng.choice(APIS)  # in this order: a seed draws what it always drew
    return Schedule(
        seed=seed,
        faults=faults,
        api=api,
        lines=rng.randint(30, 120),
        outage=(round(rng.uniform(0, 2), 2), round(rng.uniform(0.5, 4), 2)) if rng.random() < 0.3 else None,
        window="minute" if rng.random() < 0.15 else "azure",
        tpm=rng.choice([None, 30_000]),
        pool=pool,
        dies_after=round(rng.uniform(0.2, 2), 2) if pool and rng.random() < 0.6 else None,
        kill_after=round(rng.uniform(0.5, 3), 2) if rng.random() < 0.3 else None,
        args=RESPONSES_ARGS if api == "responses" else (),
    )


def input_lines(schedule: Schedule) -> Iterator[dict[str, Any]]:
    """The schedule's input: Batch-API-style lines of its API; every third chat line forces a tool."""
    tool = {
        "type": "function",
        "function": {
            "name": "label",
            "parameters": {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]},
        },
    }
    for i in range(schedule.lines):
        if schedule.api == "embeddings":
            body: dict[str, Any] = {"input": [f"text {i}-{k}" for k in range(1 + i % 3)]}
        elif schedule.api == "responses":
            body = {"input": f"prompt {i}", "max_output_tokens": 64}
        else:
            body = {"messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 40}
            if i % 3 == 0:
                body |= {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "label"}}}
        url = {"chat": "/chat/completions"}.get(schedule.api, f"/{schedule.api}")
        yield {"custom_id": f"r{i}", "method": "POST", "url": url, "body": {"model": "m", **body}}


ARGS = [
    "--no-progress",
    "-c",
    "8",
    "--timeout",
    "2",
    "--max-attempts",
    "4",
    "--backoff",
    "0.05",
    "--max-wait",
    "5",
    "--max-outage",
    "8",
    "--grace",
    "1",
    "--max-response-mb",
    "2",
]


def play(schedule: Schedule, work: Path, *, max_rss_mb: float = 400.0) -> tuple[list[str], list[Run]]:
    """Run ``schedule`` through the CLI in ``work`` (resuming as a user would); return (violations, runs)."""
    work.mkdir(parents=True, exist_ok=True)
    input_path = work / "in.jsonl"
    input_path.write_text("".join(json.dumps(line) + "\n" for line in input_lines(schedule)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
    with ExitStack() as stack:
        servers = [stack.enter_context(serve_in_thread(schedule.sim(i))) for i in range(2 if schedule.pool else 1)]
        urls = [url for url, _ in servers]
        args = ["in.jsonl", *ARGS, *schedule.args]
        if schedule.pool:
            (work / "pool.toml").write_text(
                "".join(
                    f'[[deployments]]\nname = "d{i}"\nendpoint = "{url}"\ndeployment = "dep"\n'
                    'api_key_env = "CHAOS_KEY"\n\n'
                    for i, url in enumerate(urls)
                )
            )
            args += ["--deployments", "pool.toml"]
            env["CHAOS_KEY"] = KEY
        else:
            env |= {
                "AZURE_OPENAI_ENDPOINT": urls[0],
                "AZURE_OPENAI_API_KEY": KEY,
                "AZURE_OPENAI_DEPLOYMENT_NAME": "dep",
            }
        runs = run_to_the_end(args, work, env, bound=schedule.bound(), kill_after=schedule.kill_after)
    found = violations(
        runs,
        input_path=input_path,
        results_path=work / "in.results.jsonl",
        errors_path=work / "in.results.errors.jsonl",
        secrets=[KEY],
        max_rss_mb=max_rss_mb,
        journal=[entry for _, simulator in servers for entry in simulator.journal],
    )
    return found, runs
