"""The response cache: never pay twice for the same question, and exactly once all the same."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncbatch.cli.main import main
from asyncbatch.simulator import SimConfig, Simulator
from asyncbatch.store.cache import APPLICATION_ID, ResponseCache, cache_key
from tests.helpers import batch_line, read_jsonl, simulator_env, write_jsonl

KEY = "cache-key-0123456789"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Simulator]]:
    with simulator_env(SimConfig(api_key=KEY, deployment="dep"), monkeypatch) as served:
        yield served


def _lines(n: int, distinct: int | None = None, start: int = 0) -> list[dict[str, object]]:
    return [batch_line(f"r{i}", f"question {i % (distinct or n + start)}") for i in range(start, start + n)]


def _exactly_once(path: Path, n: int) -> list[dict[str, object]]:
    rows = read_jsonl(path)
    assert sorted(r["line"] for r in rows) == list(range(1, n + 1))
    return rows


def test_a_file_run_twice_sends_each_request_once_and_new_lines_alone_after(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _lines(1000))
    cache = str(tmp_path / "answers.sqlite")
    assert main(["in.jsonl", "-q", "-c", "50", "--cache", cache]) == 0
    assert simulator.requests == 1000
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.glob("answers.sqlite*"))  # private, like the outputs
    first = _exactly_once(tmp_path / "in.results.jsonl", 1000)
    assert not any(r.get("cached") for r in first)
    assert main(["in.jsonl", "-q", "-c", "50", "--cache", cache, "-o", "again.jsonl"]) == 0
    assert simulator.requests == 1000  # nothing sent
    again = _exactly_once(tmp_path / "again.jsonl", 1000)
    assert all(r["cached"] is True and r["attempts"] == 0 for r in again)
    by_id = {r["custom_id"]: r for r in first}
    assert all(r["output"] == by_id[r["custom_id"]]["output"] for r in again)  # the same answers
    with (tmp_path / "in.jsonl").open("a") as f:
        f.writelines(json.dumps(line) + "\n" for line in _lines(100, start=1000))
    assert main(["in.jsonl", "-q", "-c", "50", "--cache", cache, "-o", "third.jsonl"]) == 0
    assert simulator.requests == 1100  # exactly the 100 new lines
    _exactly_once(tmp_path / "third.jsonl", 1100)


def test_identical_requests_in_one_file_are_sent_once_each(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    _, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _lines(1000, distinct=200))
    assert main(["in.jsonl", "-c", "100", "--no-progress", "--cache", str(tmp_path / "c.sqlite")]) == 0
    assert simulator.requests == 200 and set(simulator.answered.values()) == {1}
    rows = _exactly_once(tmp_path / "in.results.jsonl", 1000)
    assert sum(bool(r.get("cached")) for r in rows) == 800
    assert "answers from the cache" in capsys.readouterr().err


def test_a_stored_answer_that_breaks_a_changed_schema_is_not_used(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    loose = {"name": "label", "parameters": {"type": "object", "properties": {"label": {"type": "string"}}}}
    tight = {**loose, "parameters": {**loose["parameters"], "required": ["label"]}}
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"t{i}"} for i in range(20)])
    (tmp_path / "loose.json").write_text(json.dumps(loose))
    (tmp_path / "tight.json").write_text(json.dumps(tight))
    args = ["in.jsonl", "-q", "--template", "{text}", "--cache", str(tmp_path / "c.sqlite")]
    assert main([*args, "--tools", "loose.json"]) == 0 and simulator.requests == 20
    stored = ResponseCache(tmp_path / "c.sqlite")  # the answers kept break the tight schema: no label at all
    for key, raw, request_id in stored.db.execute("SELECT key, body, request_id FROM answers").fetchall():
        body = orjson.loads(raw)
        body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{}"
        assert stored.put(key, orjson.dumps(body), request_id, replace=True)  # whole entries: their checksums hold
    stored.close()
    assert main([*args, "--tools", "tight.json", "-o", "tight.jsonl"]) == 0
    assert simulator.requests == 40  # each sent again, none taken from the cache
    assert not any(r.get("cached") for r in _exactly_once(tmp_path / "tight.jsonl", 20))
    assert main([*args, "--tools", "tight.json", "-o", "third.jsonl"]) == 0
    assert simulator.requests == 40  # the new answers replaced the old ones
    assert all(r["cached"] for r in _exactly_once(tmp_path / "third.jsonl", 20))


def test_the_key_names_the_endpoint_and_the_request_never_the_key_or_tags() -> None:
    body = {"model": "dep", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    where = ["azure https://a.openai.azure.com dep"]
    key = cache_key("chat", where, body)
    assert key == cache_key("chat", where, {**body, "user": "u1", "metadata": {"run": "x"}})  # tags left out
    assert key == cache_key("chat", where, dict(reversed(list(body.items()))))  # canonical JSON
    assert key != cache_key("chat", ["azure https://b.openai.azure.com dep"], body)
    assert key != cache_key("chat", where, {**body, "temperature": 1})
    assert key != cache_key("embeddings", where, body)


def test_cache_stats_and_prune(
    tmp_path: Path,
    sim: tuple[dict[str, str], Simulator],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_jsonl(tmp_path / "in.jsonl", _lines(30))
    cache = tmp_path / "c.sqlite"
    assert main(["in.jsonl", "-q", "--cache", str(cache)]) == 0
    assert main(["in.jsonl", "-q", "--cache", str(cache), "-o", "again.jsonl"]) == 0
    capsys.readouterr()
    assert main(["cache", "stats", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["cache", "answers", "on disk", "used", "oldest", "newest"]
    assert out[0].split()[1] == str(cache) and out[1].split()[1] == "30" and out[3].split()[1:] == ["30", "times"]
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "2026")  # a short key that a date holds: figures are never masked
    monkeypatch.setenv("OPENAI_API_KEY", "times")
    assert main(["cache", "stats", str(cache)]) == 0
    shown = capsys.readouterr().out
    assert "***" not in shown and "used:     30 times" in shown
    assert main(["cache", "prune", str(cache), "--older-than", "30d"]) == 0
    assert "removed 0 answers" in capsys.readouterr().out
    assert main(["cache", "prune", str(cache), "--older-than", "0s"]) == 0
    assert "removed 30 answers" in capsys.readouterr().out
    assert main(["cache", "prune", str(cache), "--older-than", "soon"]) == 2


def test_cache_stats_shows_a_cache_whose_maker_stopped_before_its_table_as_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run switches a new cache to WAL before it makes the table: a run killed between the two, or one still
    making it, leaves a file every run opens as an empty cache. ``cache stats`` says so, and never calls it damaged
    (it said 'no such table' in 7 rounds of 200 of six processes opening a new cache together)."""
    cache = tmp_path / "c.sqlite"
    with contextlib.closing(sqlite3.connect(cache)) as db:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)  # the state the first step leaves
    made = cache.read_bytes()
    assert main(["cache", "stats", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "answers:  0" in out and "used:     0 times" in out and "oldest:   -" in out
    assert cache.read_bytes() == made
    with ResponseCache(cache) as run:  # a run opens it too, and makes it whole
        assert run.put(b"k" * 20, b'{"a": 1}', "req-1")
    assert main(["cache", "stats", str(cache)]) == 0 and "answers:  1" in capsys.readouterr().out


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a condition (not a guess at timing) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def _start(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncbatch", *args, "--no-progress", "--log-format", "json"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _summary(err: bytes) -> dict[str, object]:
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith(b"{")]
    return next(line for line in lines if line.get("event") == "summary")


def test_two_runs_at_once_on_overlapping_files_send_each_request_once_but_for_races_they_count(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    simulator.config.latency = 0.02
    write_jsonl(tmp_path / "a.jsonl", _lines(600))
    write_jsonl(tmp_path / "b.jsonl", _lines(600, start=300))  # lines 300-599 in both
    cache = str(tmp_path / "shared.sqlite")
    runs = [_start(tmp_path, env, name, "-c", "20", "--cache", cache) for name in ("a.jsonl", "b.jsonl")]
    summaries = []
    for proc in runs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        summaries.append(_summary(err))
    _exactly_once(tmp_path / "a.results.jsonl", 600)
    _exactly_once(tmp_path / "b.results.jsonl", 600)
    twice = sum(n - 1 for n in simulator.answered.values())
    raced = sum(s["cache"]["sent_by_another_run"] for s in summaries)  # type: ignore[index]
    assert len(simulator.answered) == 900 and twice == raced  # every duplicate is one the summaries name


def _open_together(path: str, start: Any, outcome: Any, puts: int) -> None:
    """One of several processes opening a new cache at once (a distributed job's workers on one state_dir)."""
    start.wait()
    try:
        with ResponseCache(Path(path)) as cache:
            for n in range(puts):
                cache.put(cache_key("chat", ["w", str(os.getpid())], {"n": n}), b'{"id": "x"}', "req")
            outcome.put(cache.problem or "ok")
    except Exception as exc:
        outcome.put(str(exc))


def test_processes_opening_a_new_cache_at_once_all_open_it(tmp_path: Path) -> None:
    """Each round, four processes open a new cache at the same instant, some writing and closing (their checkpoint
    marks the file) while others still open it: SQLite refuses the switch to WAL at once while another process
    opens the file, and a file read without locks as it is checkpointed looks damaged. Neither is a reason to
    refuse the cache: every process opens it, every round."""
    fork = multiprocessing.get_context("fork")  # the test's own process, its imports done: a fast start
    for round_ in range(12):
        path, start, outcome = str(tmp_path / f"{round_}.sqlite"), fork.Barrier(4), fork.Queue()
        workers = [fork.Process(target=_open_together, args=(path, start, outcome, n * 5)) for n in range(4)]
        for worker in workers:
            worker.start()
        said = [outcome.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert said == ["ok"] * 4, f"round {round_}"
        with ResponseCache(Path(path), mode="read") as cache:
            assert cache.stats()["entries"] == 0 + 5 + 10 + 15


def _another_run(path: str, asked: Any, told: Any) -> None:
    """A run in another process, forked before the test opens the cache (so it shares none of SQLite's memory of
    it): ``write`` stores an answer and closes the cache; ``count`` says how many of the keys it is given it finds."""
    for word, keys in iter(asked.get, None):
        if word == "write":
            with ResponseCache(Path(path)) as cache:
                told.put(cache.put(cache_key("chat", ["another"], {}), b'{"b": 2}', "req"))
        else:
            with ResponseCache(Path(path), "read") as cache:
                told.put(sum(cache.get(key) is not None for key in keys))


def test_a_run_that_looks_at_the_cache_leaves_the_locks_of_another_run_in_its_process(tmp_path: Path) -> None:
    """POSIX locks are the process's: a run that opened and closed the cache file (its look at the header) while
    another run in the same process had it open dropped that one's lock. Another process closing then took itself
    for the last user, checkpointed and deleted the log the first still wrote to: what it stored after that was
    seen by no one (1 of 20 answers here), and lost when a third process wrote (300 of 805)."""
    path = tmp_path / "c.sqlite"
    fork = multiprocessing.get_context("fork")
    asked, told = fork.Queue(), fork.Queue()
    other = fork.Process(target=_another_run, args=(str(path), asked, told), daemon=True)
    other.start()
    keys = [cache_key("chat", ["first"], {"n": n}) for n in range(20)]
    with ResponseCache(path) as first:
        assert first.put(keys[0], b'{"a": 1}', "req")
        descriptors = []
        for _ in range(30):  # other runs in this process start and end while the first one goes on
            with ResponseCache(path, "read") as second:
                assert second.get(keys[0]) is not None
            descriptors.append(len(os.listdir("/proc/self/fd")))
        assert len(set(descriptors)) == 1  # none left open by each (SQLite keeps one of its own for the next)
        asked.put(("write", []))
        assert told.get(timeout=60) is True  # and closed: not the last user, it left the log to the first
        for key in keys[1:]:
            assert first.put(key, b'{"a": 1}', "req")
        asked.put(("count", keys))
        assert told.get(timeout=60) == 20
    asked.put(None)
    other.join(timeout=60)
    with ResponseCache(path, "read") as cache:
        assert cache.stats()["entries"] == 21


def _runs_in_threads(path: str, start: Any, outcome: Any, seed: int) -> None:
    """One process of several, each running three runs at once in threads, one after another: each stores
    answers, reads the cache or only looks at it, as runs and ``cache stats`` do."""
    start.wait()
    said: list[str] = []
    stored: list[str] = []

    def runs(thread: int) -> None:
        rng = random.Random(seed * 10 + thread)
        for run in range(5):
            try:
                if (kind := rng.choice(["write", "write", "read"])) == "write":
                    with ResponseCache(Path(path)) as cache:
                        for n in range(rng.randint(1, 8)):
                            stored.append(name := f"{os.getpid()}.{thread}.{run}.{n}")
                            cache.put(cache_key("chat", [name], {}), b'{"a": 1}', "req")
                        said.extend([cache.problem] if cache.problem else [])
                else:
                    with ResponseCache(Path(path), "read") as cache:
                        cache.stats()
            except Exception as exc:
                said.append(f"{kind}: {exc}")

    threads = [threading.Thread(target=runs, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcome.put((said, stored))


def test_runs_in_threads_of_several_processes_at_once_keep_every_answer_and_the_file_whole(tmp_path: Path) -> None:
    """What ``asyncio.gather`` of two ``asyncbatch.map`` does, in several processes. Before a run's look at the file
    kept the locks of the other runs in its process, every round of this damaged the cache (a disk I/O error, 'file
    is not a database', pages never used) or lost answers: 40 rounds in 40 of four processes, 2,186 answers lost."""
    fork = multiprocessing.get_context("fork")
    for round_ in range(4):
        path = tmp_path / f"{round_}.sqlite"
        with ResponseCache(path) as cache:  # an existing cache, as a job's second wave of runs meets it
            cache.put(cache_key("chat", ["seed"], {}), b"{}", "req")
        start, outcome = fork.Barrier(3), fork.Queue()
        workers = [fork.Process(target=_runs_in_threads, args=(str(path), start, outcome, n)) for n in range(3)]
        for worker in workers:
            worker.start()
        results = [outcome.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert [said for said, _ in results] == [[]] * 3, f"round {round_}"
        with ResponseCache(path, "read") as cache:
            missing = [
                name for _, stored in results for name in stored if cache.get(cache_key("chat", [name], {})) is None
            ]
            assert not missing and cache.stats()["entries"] == 1 + sum(len(stored) for _, stored in results)


def test_kill_9_while_the_cache_is_written_leaves_it_readable_and_the_run_exactly_once(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _lines(3000))
    cache = tmp_path / "c.sqlite"
    rng = random.Random(7)
    for _ in range(10):
        proc = _start(tmp_path, env, "in.jsonl", "-c", "50", "--cache", str(cache))
        target = simulator.requests + rng.randint(20, 200)
        _wait_for(lambda p=proc, t=target: simulator.requests >= t or p.poll() is not None)  # type: ignore[misc]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL, "the run had finished: nothing was killed"
        with sqlite3.connect(cache) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert main(["in.jsonl", "-q", "-c", "50", "--cache", str(cache)]) == 0
    _exactly_once(tmp_path / "in.results.jsonl", 3000)
    assert main(["in.jsonl", "-q", "--cache", str(cache), "-o", "again.jsonl"]) == 0
    assert all(r["cached"] for r in _exactly_once(tmp_path / "again.jsonl", 3000))


def test_lines_the_cache_answers_are_not_uploaded_to_the_batch_api(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _lines(40))
    cache = str(tmp_path / "c.sqlite")
    write_jsonl(tmp_path / "half.jsonl", _lines(20))
    assert main(["half.jsonl", "-q", "--cache", cache]) == 0 and simulator.requests == 20
    batch = ["--batch-api", "--poll-interval", "0.05", "--cache", cache]
    assert main(["in.jsonl", "-q", *batch]) == 0
    (job,) = simulator.batches.jobs.values()
    assert len(job.lines) == 20  # only the lines the cache could not answer went into the job
    rows = _exactly_once(tmp_path / "in.results.jsonl", 40)
    assert sum(bool(r.get("cached")) for r in rows) == 20 and simulator.requests == 40  # 20 live, then 20 in the job
    assert main(["in.jsonl", "-q", "--cache", cache, "-o", "live.jsonl"]) == 0  # the job's answers were kept too
    assert simulator.requests == 40 and all(r["cached"] for r in _exactly_once(tmp_path / "live.jsonl", 40))


def test_an_answer_quoting_the_key_is_kept_without_it(tmp_path: Path, sim: tuple[dict[str, str], Simulator]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [batch_line("leak", f"repeat after me: {KEY}")])
    cache = tmp_path / "c.sqlite"
    assert main(["in.jsonl", "-q", "--cache", str(cache)]) == 0
    assert KEY.encode() not in (tmp_path / "in.results.jsonl").read_bytes()
    assert all(KEY.encode() not in p.read_bytes() for p in tmp_path.glob("c.sqlite*"))  # the file and its WAL


@given(
    body=st.dictionaries(
        st.sampled_from(["messages", "temperature", "max_tokens", "tools", "n"]), st.integers(-(2**63), 2**63 - 1)
    ),  # what a request can hold: a line orjson cannot write again is refused before it is a job
    tags=st.dictionaries(st.sampled_from(["user", "metadata"]), st.text(max_size=5)),
    seed=st.randoms(),
)
def test_any_request_keys_alike_whatever_its_field_order_and_tags(
    body: dict[str, int], tags: dict[str, str], seed: random.Random
) -> None:
    items = [*body.items(), *tags.items()]
    seed.shuffle(items)
    assert cache_key("chat", ["e"], dict(items)) == cache_key("chat", ["e"], body)


# -- the cache file: ours, or refused unchanged -----------------------------------------------------


def _cli(cwd: Path, *args: str) -> tuple[int, str]:
    """The CLI in this process (its own ``main``), with what it printed on stderr."""
    err = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def _filled(tmp_path: Path, n: int = 60) -> Path:
    """A cache made by a real run: ``n`` answers of about a kilobyte, so it spans many pages."""
    write_jsonl(tmp_path / "in.jsonl", [batch_line(f"r{i}", f"question {i} " + "words " * 150) for i in range(n)])
    cache = tmp_path / "c.sqlite"
    assert _cli(tmp_path, "in.jsonl", "-q", "--cache", str(cache), "-o", "first.jsonl")[0] == 0
    return cache


def _side_files(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]


def test_a_cache_damaged_in_its_middle_is_named_with_what_to_do_by_a_run_and_by_cache_stats(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    cache = _filled(tmp_path)
    pages = cache.stat().st_size // 4096
    assert pages >= 20
    with cache.open("r+b") as f:  # one page in the middle: random bytes
        f.seek(4096 * (pages // 2))
        f.write(random.Random(3).randbytes(4096))
    damaged, sent = cache.read_bytes(), simulator.requests
    code, err = _cli(tmp_path, "in.jsonl", "-q", "--cache", str(cache), "-o", "again.jsonl")
    assert code == 2 and "Traceback" not in err
    assert f"--cache {cache} is damaged" in err and f"HINT: move it aside (`mv {cache} " in err
    assert "or run without --cache" in err
    assert simulator.requests == sent and not (tmp_path / "again.jsonl").exists()  # refused before anything
    for command in (["stats"], ["prune", "--older-than", "1d"]):
        code, err = _cli(tmp_path, "cache", *command[:1], str(cache), *command[1:])
        assert code == 2 and f"{cache} is damaged" in err and "move it aside" in err and "Traceback" not in err
        assert "--cache" not in err  # the path is this command's argument, not an option's value
    assert cache.read_bytes() == damaged  # left as it is
    moved = re.search(r"\(`(mv .+?)`\) and run again", err)
    assert moved is not None
    subprocess.run(moved[1], shell=True, cwd=tmp_path, check=True)  # what the hint says, as printed: then it runs
    assert (tmp_path / "c.sqlite.damaged").read_bytes() == damaged
    assert _cli(tmp_path, "in.jsonl", "-q", "--cache", str(cache), "-o", "again.jsonl")[0] == 0


def _foreign(path: Path, kind: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        if kind == "wal":
            db.execute("PRAGMA journal_mode=WAL")
        if kind == "marked":  # another program's mark, on a table that looks like ours
            db.execute("PRAGMA application_id = 1234567")
            db.execute("CREATE TABLE answers (key BLOB PRIMARY KEY, body BLOB, request_id TEXT, stored REAL, hits INT)")
        else:
            db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            db.execute("INSERT INTO users (name) VALUES ('ada'), ('grace')")
        db.commit()


@pytest.mark.parametrize("kind", ["rollback", "wal", "marked"])
def test_another_programs_sqlite_file_is_refused_and_left_byte_identical(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator], kind: str
) -> None:
    _, simulator = sim
    write_jsonl(tmp_path / "in.jsonl", _lines(5))
    app = tmp_path / "app.db"
    _foreign(app, kind)
    before = app.read_bytes()
    code, err = _cli(tmp_path, "in.jsonl", "-q", "--cache", "app.db")
    assert code == 2 and "--cache app.db is not an asyncbatch response cache" in err and "left as it is" in err
    assert app.read_bytes() == before and not _side_files(app)  # not a byte, not a WAL beside it
    assert simulator.requests == 0 and not (tmp_path / "in.results.jsonl").exists()
    assert _cli(tmp_path, "cache", "prune", "app.db", "--older-than", "0s")[0] == 2
    assert app.read_bytes() == before and not _side_files(app)


OLD_SCHEMA = (
    "CREATE TABLE answers (key BLOB PRIMARY KEY, body BLOB NOT NULL, request_id TEXT, stored REAL NOT NULL, "
    "hits INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
)


def test_a_cache_an_older_version_made_is_used_and_marked_as_ours(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    cache = _filled(tmp_path, 20)
    old = tmp_path / "old.sqlite"
    with contextlib.closing(sqlite3.connect(old)) as db:  # what the version before the mark wrote
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(OLD_SCHEMA)
        db.execute("ATTACH ? AS new", (str(cache),))
        db.execute("INSERT INTO answers SELECT key, body, request_id, stored, hits FROM new.answers")
        db.commit()
    assert _cli(tmp_path, "in.jsonl", "-q", "--cache", str(old), "-o", "again.jsonl")[0] == 0
    assert simulator.requests == 20 and all(r["cached"] for r in _exactly_once(tmp_path / "again.jsonl", 20))
    with contextlib.closing(sqlite3.connect(old)) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert "checksum" in {row[1] for row in db.execute("PRAGMA table_info(answers)")}


def test_an_entry_whose_bytes_changed_on_disk_is_not_used_but_asked_again(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    _, simulator = sim
    cache = _filled(tmp_path, 20)
    with contextlib.closing(sqlite3.connect(cache)) as db:  # damage SQLite cannot see: valid JSON, other words
        text = "CAST(body AS TEXT)"
        db.execute(
            f"UPDATE answers SET body = CAST(replace({text}, 'question 1', 'question 9') AS BLOB) "
            f"WHERE {text} LIKE '%question 1%'"
        )
        changed = db.execute("SELECT changes()").fetchone()[0]
        db.commit()
    assert changed == 11  # question 1 and 10-19
    assert _cli(tmp_path, "in.jsonl", "-q", "--cache", str(cache), "-o", "again.jsonl")[0] == 0
    assert simulator.requests == 20 + changed
    rows = _exactly_once(tmp_path / "again.jsonl", 20)
    assert sum(not r.get("cached") for r in rows) == changed
    assert all(f"question {int(r['custom_id'][1:])} " in r["output"] for r in rows)  # each its own answer
    assert _cli(tmp_path, "in.jsonl", "-q", "--cache", str(cache), "-o", "third.jsonl")[0] == 0
    assert simulator.requests == 20 + changed  # the fresh answers took their place


def _without_override(command: list[str]) -> list[str]:
    """``command`` run without the power to ignore file permissions (root's, here), so a 0400 file is read-only."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to hold")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *command]


def test_a_read_only_cache_is_used_with_cache_mode_read_and_nothing_is_sent_for_its_answers(
    tmp_path: Path, sim: tuple[dict[str, str], Simulator]
) -> None:
    env, simulator = sim
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    write_jsonl(tmp_path / "in.jsonl", _lines(30))
    cache = shelf / "c.sqlite"
    assert _cli(tmp_path, "in.jsonl", "-q", "--cache", str(cache), "-o", "first.jsonl")[0] == 0
    assert simulator.requests == 30 and not _side_files(cache)  # closed: the WAL folded back in
    cache.chmod(0o400)
    shelf.chmod(0o500)
    before = cache.read_bytes()
    try:
        run = [sys.executable, "-m", "asyncbatch", "in.jsonl", "-q", "--no-progress", "--cache", str(cache)]
        refused = subprocess.run(_without_override(run), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert refused.returncode == 2 and "HINT: --cache-mode read uses a cache it cannot write to" in refused.stderr
        used = subprocess.run(
            _without_override([*run, "--cache-mode", "read", "-o", "again.jsonl"]),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert used.returncode == 0, used.stderr
    finally:
        shelf.chmod(0o700)
    assert simulator.requests == 30  # every answer from the cache: nothing sent
    assert all(r["cached"] for r in _exactly_once(tmp_path / "again.jsonl", 30))
    assert cache.read_bytes() == before and not _side_files(cache)


def test_a_cache_that_fails_in_use_is_turned_off_with_one_warning_and_never_raises(tmp_path: Path) -> None:
    warnings: list[str] = []
    cache = ResponseCache(tmp_path / "c.sqlite", warn=warnings.append)
    assert cache.put(b"k" * 20, b'{"a": 1}', "req-1") and cache.get(b"k" * 20) is not None
    cache.db.execute("PRAGMA busy_timeout = 0")  # a second process holds the write lock: no waiting for it here
    with contextlib.closing(sqlite3.connect(tmp_path / "c.sqlite", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        assert cache.put(b"j" * 20, b'{"b": 2}', "req-2")  # not kept, and no exception
        cache.hit(b"k" * 20)
        other.execute("ROLLBACK")
    assert len(warnings) == 1 and "could not be written (database is locked)" in warnings[0]
    assert f"the response cache {tmp_path / 'c.sqlite'}" in warnings[0] and "goes on without it" in warnings[0]
    assert cache.get(b"k" * 20) is None  # off for the rest of the run
    cache.close()
