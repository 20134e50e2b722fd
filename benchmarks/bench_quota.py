"""Run at the quota of servers that count differently from the client.

    python benchmarks/bench_quota.py [--n 2000] [--tpm 1200000] [--rpm 7200] [--latency-ms 300] [--concurrency 200]
    python benchmarks/bench_quota.py --only minute      # just the fixed-minute-window server
    python benchmarks/bench_quota.py --only shared      # just the runs sharing one deployment
    python benchmarks/bench_quota.py --only azure --modes "half msg+4"   # one charge model
    python benchmarks/bench_quota.py --only headers     # headers as evidence: budgets said gone, bare 429s

Requests are Batch-API lines of varied shape: prompts of 200 to 3,000 characters,
one to three messages, a forced tool (about 600 characters of definition) on two
lines in three, max_tokens 50 except on every fifth line, which sets none. Every
client gets a fresh simulator process (127.0.0.1). The simulator charges each
request by its own model, which differs from the client's estimate in structure:

  client           what the client estimates: prompt and tool characters / 4 + max_tokens
  msg+4 no-tools   4 tokens per message, tool definitions not counted
  half msg+4       the same, the prompt part halved
  double tools     the prompt part doubled, 4 per message, tool definitions counted
  reserve 256      a request without max_tokens reserves 256 tokens (the client reserves none)

Each mode runs with the quota given (--tpm --rpm) and adaptive (no quota given).
Then two and four runs at once share one deployment (the client model), each
with its share of the lines and of the concurrency, given the whole quota each
or adaptive; the ideal is the one run's. Then a gateway-like server with fixed wall-clock minute windows, no rate-limit
headers and no retry-after (TPM --minute-tpm per minute, counted as "msg+4 no-tools"), adaptive; its
learned limit is reported in the units the summary names, and converted to the server's with the
bench's own knowledge of how that server counts. The naive
SDK loop (chat.completions.create under a semaphore, 429s retried) runs on the
"msg+4 no-tools" server.

ideal (Azure windows) = max(max(0, total charge - TPM/6) / (TPM/60), N / (RPM/60), N x latency / C) + latency,
computed from the server's own charge.
ideal (minute windows) = the wait for as many minute turns as the work needs, from the run's start, + latency.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    azure_env,
    clear_outputs,
    count_lines,
    machine,
    run_cli,
    simulator_process,
    simulator_stats,
    summary_rows,
    wall_seconds,
)
from competitors import in_fresh_process

from asyncbatch.simulator.charge import Charging, charge

TOOL = json.loads((Path(__file__).resolve().parent.parent / "examples" / "get_company_info.json").read_text())
MODES: dict[str, tuple[list[str], Charging]] = {
    "client": ([], Charging()),
    "msg+4 no-tools": (["--charge-per-message", "4", "--no-tool-charge"], Charging(per_message=4, count_tools=False)),
    "half msg+4": (
        ["--charge-factor", "0.5", "--charge-per-message", "4", "--no-tool-charge"],
        Charging(factor=0.5, per_message=4, count_tools=False),
    ),
    "double tools": (["--charge-factor", "2", "--charge-per-message", "4"], Charging(factor=2.0, per_message=4)),
    "reserve 256": (["--charge-default-max-tokens", "256"], Charging(default_max_tokens=256)),
}
NAIVE_ON = "msg+4 no-tools"
MINUTE_COUNTS = "msg+4 no-tools"  # how the minute-window gateway counts: not as the client estimates


def write_lines(path: Path, n: int) -> list[dict[str, Any]]:
    bodies = []
    tool = {"type": "function", "function": TOOL}
    with path.open("w") as f:
        for i in range(n):
            size = 200 + (i * 7919) % 2800
            messages = [{"role": "user", "content": f"request {i}: " + "x" * size}]
            if i % 3:
                messages.insert(0, {"role": "system", "content": "Answer with the tool." + " y" * (i % 40)})
            if i % 3 == 2:
                messages.insert(1, {"role": "assistant", "content": "Ready."})
            body: dict[str, Any] = {"model": "m", "messages": messages}
            if i % 5:
                body["max_tokens"] = 50
            if i % 3 != 1:
                body |= {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": TOOL["name"]}}}
            bodies.append(body)
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/chat/completions", "body": body}))
            f.write("\n")
    return bodies


def run_asyncbatch(work: Path, sim_args: list[str], extra: list[str], c: int) -> tuple[float, dict[str, Any], str]:
    clear_outputs(work)
    with simulator_process(*sim_args) as url:
        _, code, summary = run_cli(["in.jsonl", "-c", str(c), *extra], azure_env(url), work)
        stats = simulator_stats(url)
    note = f"exit {code}, {count_lines(work / 'in.results.jsonl')} ok, sent over {stats['span']:.1f} s"
    if "server charge" in summary:
        note += f", learned charge {summary['server charge'].split(' x')[0]}x"
    return wall_seconds(summary), stats, note


def azure_windows(a: argparse.Namespace, work: Path, bodies: list[dict[str, Any]], rows: list[tuple[Any, ...]]) -> None:
    latency = a.latency_ms / 1000
    quota = ["--tpm", str(a.tpm), "--rpm", str(a.rpm)]
    base = [*quota, "--latency-ms", str(a.latency_ms)]
    for mode, (flags, charging) in MODES.items():
        if a.modes and mode not in a.modes:
            continue
        total = sum(charge(b, charging) for b in bodies)
        ideal = max(max(0, total - a.tpm / 6) / (a.tpm / 60), a.n / (a.rpm / 60), a.n * latency / a.concurrency)
        ideal += latency
        ratio = total / sum(charge(b, Charging()) for b in bodies)
        for name, extra in (("quota given", quota), ("adaptive", [])):
            span, stats, note = run_asyncbatch(work, [*base, *flags], extra, a.concurrency)
            rows.append((f"{mode} ({ratio:.2f}x)", f"asyncbatch {name}", span, ideal, stats, note))
        if mode == NAIVE_ON and not a.skip_naive:
            with simulator_process(*base, *flags) as url:
                span = in_fresh_process("naive-retry", url, work / "in.jsonl", a.concurrency)["span"]
                rows.append((f"{mode} ({ratio:.2f}x)", "naive SDK loop", span, ideal, simulator_stats(url), ""))


def shared(a: argparse.Namespace, work: Path, bodies: list[dict[str, Any]], rows: list[tuple[Any, ...]]) -> None:
    """Two and four runs at once, each on its share of the lines, against one deployment (the client model)."""
    latency = a.latency_ms / 1000
    total = sum(charge(b, Charging()) for b in bodies)
    ideal = max(max(0, total - a.tpm / 6) / (a.tpm / 60), a.n / (a.rpm / 60), a.n * latency / a.concurrency) + latency
    lines = (work / "in.jsonl").read_text().splitlines(keepends=True)
    for k in (2, 4):
        for name, extra in (("quota given", ["--tpm", str(a.tpm), "--rpm", str(a.rpm)]), ("adaptive", [])):
            with simulator_process("--tpm", str(a.tpm), "--rpm", str(a.rpm), "--latency-ms", str(a.latency_ms)) as url:
                procs, ends = [], []
                for i in range(k):
                    (work / f"share{i}.jsonl").write_text("".join(lines[i::k]))
                    clear_outputs(work, f"share{i}")
                    args = [f"share{i}.jsonl", "-c", str(a.concurrency // k), "--no-progress", *extra]
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "asyncbatch", *args],
                            env=azure_env(url),
                            cwd=work,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                    )
                for proc in procs:
                    _, err = proc.communicate()
                    ends.append((time.time(), proc.returncode, err))
                stats = simulator_stats(url)
            starts = [end - wall_seconds(summary_rows(err)) for end, _, err in ends]
            span = max(end for end, _, _ in ends) - min(starts)
            done = sum(count_lines(work / f"share{i}.results.jsonl") for i in range(k))
            codes = sorted({code for _, code, _ in ends})
            note = f"exit {codes}, {done} ok; each run -c {a.concurrency // k}"
            rows.append((f"{k} runs share the client model", f"asyncbatch {name}", span, ideal, stats, note))


def minute_windows(
    a: argparse.Namespace, work: Path, bodies: list[dict[str, Any]], rows: list[tuple[Any, ...]]
) -> None:
    latency = a.latency_ms / 1000
    flags, charging = MODES[MINUTE_COUNTS]  # a gateway counts its own way too
    total = sum(charge(b, charging) for b in bodies)
    ratio = total / sum(charge(b, Charging()) for b in bodies)  # the server's count per unit of the estimate
    sim_args = [
        "--window",
        "minute",
        "--tpm",
        str(a.minute_tpm),
        "--rpm",
        str(a.rpm),
        "--latency-ms",
        str(a.latency_ms),
        *flags,
    ]
    with simulator_process(*sim_args) as url:
        wall = time.time()
        time.sleep((13 - wall % 60) % 60)  # start about 15 s into a minute (after start-up), for a steady ideal
        clear_outputs(work)
        args = ["in.jsonl", "-c", str(a.concurrency), "--log-format", "json"]
        proc = subprocess.run([sys.executable, "-m", "asyncbatch", *args], env=azure_env(url), cwd=work,
                              capture_output=True, text=True)  # fmt: skip
        ended = time.time()
        stats = simulator_stats(url)
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    summary = next(e for e in events if e["event"] == "summary")
    started = ended - summary["wall_seconds"]  # the run's own start, after the interpreter's (its exit is quick)
    looks = [e for e in events if e["event"] == "status"]
    waiting = [b for a_, b in itertools.pairwise(looks) if b["done"] == a_["done"] < b["total"]]
    named = sum(1 for e in waiting if e.get("notice"))
    turns = math.ceil(total / a.minute_tpm) - 1
    ideal = (60 - started % 60 + 60 * (turns - 1) if turns else a.n * latency / a.concurrency) + latency
    span = summary["wall_seconds"]
    learned = summary.get("learned_tpm") or 0
    units = summary.get("learned_tpm_units")
    in_server_units = learned * ratio if units == "estimate" else learned  # the bench knows the server's count
    note = (
        f"exit {proc.returncode}, {count_lines(work / 'in.results.jsonl')} ok, {turns} minute turns needed; "
        f"learned limit {learned:,.0f} in the {units} units = {in_server_units:,.0f} of the server's "
        f"({in_server_units / a.minute_tpm:.2f}x the real one); "
        f"{named}/{len(waiting)} looks during waits named the wait"
    )
    server = f"minute windows, {MINUTE_COUNTS} ({ratio:.2f}x), TPM {a.minute_tpm:,}"
    rows.append((server, "asyncbatch adaptive", span, ideal, stats, note))


def table(rows: list[tuple]) -> list[str]:
    """The rows under their header, each column as wide as its widest cell: no two columns ever run together
    (the minute-window server's name is longer than the others')."""
    head = ("server charge (x client)", "client")
    wide = [max(len(str(row[i])) for row in [head, *rows]) + 2 for i in range(2)]
    lines = [f"{head[0]:<{wide[0]}}{head[1]:<{wide[1]}}{'span s':>8}{'ideal s':>9}{'x ideal':>9}{'429s':>7}{'%':>7}"]
    for server, client, span, ideal, stats, note in rows:
        throttled = stats["statuses"].get("429", 0)
        share = 100 * throttled / max(1, stats["requests"])
        lines.append(
            f"{server:<{wide[0]}}{client:<{wide[1]}}{span:>8.1f}{ideal:>9.1f}{span / ideal:>9.2f}{throttled:>7}"
            f"{share:>6.1f}%  {note}"
        )
    return lines


def headers_as_evidence(a: argparse.Namespace, work: Path) -> list[str]:
    """Servers whose headers are not orders: a budget said to be gone on every answer while nothing is refused
    (0, or -1 as Azure's Responses API has been reported to send), against the same server saying nothing,
    by the server's own count of requests a second; and each first try refused with a bare 429, then admitted."""
    lines = []
    base = ["--latency-ms", str(a.latency_ms)]
    for name, quota in (("adaptive", []), ("--tpm --rpm", ["--tpm", str(a.tpm), "--rpm", str(a.rpm)])):
        rates = {}
        for says in ("none", "0", "-1"):
            said = [] if says == "none" else ["--remaining-tokens-says", says, "--remaining-requests-says", says]
            clear_outputs(work)
            with simulator_process(*base, *said) as url:
                _, code, _ = run_cli(["in.jsonl", "-c", str(a.concurrency), *quota], azure_env(url), work)
                stats = simulator_stats(url)
            rates[says] = stats["requests"] / stats["span"]
            ratio = f", {rates[says] / rates['none']:.2f}x the same server saying nothing" if says != "none" else ""
            lines.append(
                f"budget headers say {says:<4} never a 429, asyncbatch {name:<11}: exit {code}, "
                f"{rates[says]:,.0f} requests/s by the server's clock{ratio}"
            )
    head = "".join(line for line in (work / "in.jsonl").read_text().splitlines(keepends=True)[:300])
    (work / "first.jsonl").write_text(head)
    clear_outputs(work, "first")
    with simulator_process(*base, "--first-try", "429-nohint") as url:
        args = ["first.jsonl", "-c", str(a.concurrency), "--max-wait", "20"]
        _, code, summary = run_cli(args, azure_env(url), work)
        stats = simulator_stats(url)
    lines.append(
        f"each first try refused with a bare 429, 300 lines, --max-wait 20: exit {code}, "
        f"{count_lines(work / 'first.results.jsonl')} answered in {wall_seconds(summary):.1f} s (the run's own "
        f"wall time), {stats['requests']} requests, {stats['statuses'].get('429', 0)} of them 429s"
    )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--tpm", type=int, default=1_200_000)
    p.add_argument("--rpm", type=int, default=7200)
    p.add_argument("--minute-tpm", type=int, default=400_000)
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--only", choices=["azure", "shared", "minute", "headers"])
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--modes", nargs="*", choices=list(MODES), help="only these charge models (default: all)")
    a = p.parse_args()
    rows: list[tuple[Any, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bodies = write_lines(work / "in.jsonl", a.n)
        if a.only in (None, "azure"):
            azure_windows(a, work, bodies, rows)
        if a.only in (None, "shared"):
            shared(a, work, bodies, rows)
        if a.only in (None, "minute"):
            minute_windows(a, work, bodies, rows)
        evidence = headers_as_evidence(a, work) if a.only in (None, "headers") else []
    print(f"machine: {machine()}")
    print(f"{a.n} requests; TPM {a.tpm:,}, RPM {a.rpm:,}, {a.latency_ms:g} ms latency, concurrency {a.concurrency}")
    for line in table(rows):
        print(line)
    print("(asyncbatch spans are the run's own wall time, from its summary: no interpreter start-up)")
    for line in evidence:
        print(line)


if __name__ == "__main__":
    main()
