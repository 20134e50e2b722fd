"""The report and the metrics log at their acceptance sizes.

    python benchmarks/bench_report.py                       # --lines 5000 --log-lines 100000 --big-lines 1000000
    python benchmarks/bench_report.py --big-lines 0         # skip the 1M-line run (several minutes here)

1. A run of --lines lines over a pool of two simulators (each in its own process) with faults
   (2% 500s, 1% 400s, 0.5% dropped connections), the second with a small quota (429s):
   ``asyncbatch report``'s size and time, and the page in headless Chromium with no network
   (every chart drawn, no console message, the totals of the ``--log-format json`` summary).
2. The metrics log's size after a --log-lines simulated run (50 ms latency, concurrency 200) and a
   --big-lines run at the simulator's full speed (zero latency: the most lines per second, so the
   most lines per row). ``--dry-run`` sends nothing and keeps no state: it has no log at all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import KEY, machine, simulator_process

CHROMIUM = "/usr/bin/chromium"


def write_lines(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            row = {"custom_id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 20}
            f.write(json.dumps(row) + "\n")


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "asyncbatch", *args], cwd=cwd, env=env, capture_output=True, text=True)
    return done.returncode, done.stderr


def summary_of(stderr: str) -> dict[str, Any]:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return next(e for e in events if e["event"] == "summary")


def pool_run(work: Path, lines: int) -> tuple[dict[str, Any], Path]:
    write_lines(work / "in.jsonl", lines)
    faults = ["--fail-500", "0.02", "--fail-400", "0.01", "--fail-reset", "0.005"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))} | {"POOL_KEY": KEY}
    with ExitStack() as stack:
        entries = []
        for name, quota in (("east", []), ("west", ["--rpm", "600"])):
            url = stack.enter_context(simulator_process(*faults, *quota))
            entries.append(f'[[deployments]]\nname = "{name}"\nendpoint = "{url}"\ndeployment = "gpt-4o-mini"\n'
                           'api_key_env = "POOL_KEY"\n')  # fmt: skip
        (work / "pool.toml").write_text("\n".join(entries))
        args = ["in.jsonl", "--deployments", "pool.toml", "-c", "50", "--backoff", "0.01", "--log-format", "json",
                "--no-progress"]  # fmt: skip
        code, err = cli(args, work, env)
    assert code in (0, 1), err
    return summary_of(err), work / "in.results.jsonl"


def look(page_file: Path, summary: dict[str, Any]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        context = browser.new_context(offline=True)
        asked: list[str] = []
        context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else (
            asked.append(r.request.url), r.abort()))  # fmt: skip
        page = context.new_page()
        logged: list[str] = []
        page.on("console", lambda m: logged.append(m.text))
        page.on("pageerror", lambda e: logged.append(str(e)))
        started = time.perf_counter()
        page.goto(page_file.as_uri())
        page.wait_for_selector("body[data-charts=done]", timeout=60_000)
        drawn = time.perf_counter() - started
        marks = "ds => ds.map(d => [d.dataset.chart, d.dataset.rendered, d.querySelectorAll('.role-mark path').length])"
        charts = page.eval_on_selector_all(".chart", marks)
        texts = "es => es.map(e => [e.dataset.key, e.textContent])"
        shown = dict(page.eval_on_selector_all("#summary [data-key]", texts))
        browser.close()
    totals_equal = all(
        float(shown[k].replace(",", "")) == round(summary[k], 0 if isinstance(summary[k], int) else 6)
        for k in ("succeeded", "failed", "attempts", "retries", "throttled", "prompt_tokens", "completion_tokens")
    )
    return {"charts": charts, "asked": asked, "logged": logged, "drawn_s": drawn, "totals_equal": totals_equal}


def log_size(work: Path, lines: int, latency_ms: int, concurrency: int) -> tuple[int, float]:
    write_lines(work / "big.jsonl", lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
    started = time.perf_counter()
    code, err = cli(["big.jsonl", "--simulate", "--sim-latency-ms", str(latency_ms), "-c", str(concurrency), "-q"],
                    work, env)  # fmt: skip
    took = time.perf_counter() - started
    assert code == 0, err
    return (work / "big.results.jsonl.state" / "metrics").stat().st_size, took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=5000)
    p.add_argument("--log-lines", type=int, default=100_000)
    p.add_argument("--big-lines", type=int, default=1_000_000)
    a = p.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        summary, results = pool_run(work, a.lines)
        started = time.perf_counter()
        code, err = cli(["report", str(results), "-o", "report.html"], work, dict(os.environ))
        took = time.perf_counter() - started
        assert code == 0, err
        size = (work / "report.html").stat().st_size
        seen = look(work / "report.html", summary)
        print(f"{a.lines:,}-line pool run: {summary['succeeded']:,} succeeded, {summary['failed']:,} failed, "
              f"{summary['throttled']:,} 429s, {summary['retries']:,} retries")  # fmt: skip
        print(f"  report: {size / 1e6:.2f} MB (limit 5 MB), written in {took:.1f} s (CLI start-up included)")
        print(f"  Chromium, no network: {len(seen['charts'])} charts, all drawn: "
              f"{all(r == 'yes' and n > 0 for _, r, n in seen['charts'])}, in {seen['drawn_s']:.2f} s; console "
              f"messages {len(seen['logged'])}, requests off disk {len(seen['asked'])}; totals equal the JSON "
              f"summary: {seen['totals_equal']}")  # fmt: skip
    for lines, latency, concurrency in ((a.log_lines, 50, 200), (a.big_lines, 0, 100)):
        if lines:
            with tempfile.TemporaryDirectory() as tmp:
                size, took = log_size(Path(tmp), lines, latency, concurrency)
            print(f"metrics log of a {lines:,}-line simulated run ({latency} ms latency, concurrency {concurrency}, "
                  f"{took:.0f} s): {size / 1e3:.0f} kB (limit 5 MB)")  # fmt: skip


if __name__ == "__main__":
    main()
