"""An input file that is mostly bad, or whose Parquet footer lies, holds no more memory than a good one, is heard
when interrupted, and never has the reader stand in for rows that are not there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncbatch.errors import InputError
from asyncbatch.input.reader import BadLine, read_lines, sniff
from asyncbatch.simulator.invariants import run_cli
from tests.helpers import read_jsonl

SIM = ["--simulate", "--deployment", "gpt-4o-mini", "--sim-latency-ms", "1", "--no-progress", "-q"]


def _mostly_bad(path: Path, bad: int) -> Path:
    with path.open("w") as f:
        f.write(json.dumps({"custom_id": "ok", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
        f.writelines(f"{{not json {i}\n" for i in range(bad))
    return path


def test_a_million_bad_lines_scaled_down_hold_no_more_memory_than_a_thousand(tmp_path: Path) -> None:
    """Each bad line's error line used to wait in the writer's queue until the reader reached the end."""
    peaks = {}
    for bad in (1_000, 150_000):
        folder = tmp_path / str(bad)
        folder.mkdir()
        _mostly_bad(folder / "in.jsonl", bad)
        run = run_cli(["in.jsonl", *SIM], folder, dict(os.environ), bound=120)
        assert run.code == 1, run.stderr
        assert len(read_jsonl(folder / "in.results.errors.jsonl")) == bad
        peaks[bad] = run.peak_rss_mb
    assert peaks[150_000] < peaks[1_000] + 40, peaks  # it was + 120 MB, growing with the file


def test_a_stretch_of_bad_lines_hears_ctrl_c(tmp_path: Path) -> None:
    """The interrupt is heard while the bad lines are read, not once they all are."""
    bad = 300_000
    _mostly_bad(tmp_path / "in.jsonl", bad)
    errors = tmp_path / "in.results.errors.jsonl"
    command = [sys.executable, "-m", "asyncbatch", "in.jsonl", *SIM]
    running = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not (errors.exists() and errors.stat().st_size > 0):  # a poll of the file, not a wait for time
            assert running.poll() is None, running.communicate()[1]
            time.sleep(0.005)
        running.send_signal(signal.SIGINT)
        err = running.communicate(timeout=60)[1].decode()
    finally:
        running.kill()
    assert running.returncode == 130 and "Traceback" not in err, err
    assert 0 < len(read_jsonl(errors)) < bad  # stopped in the middle of the bad stretch, every line whole


# -- a Parquet footer that lies -------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _lying(path: Path, rows: int, claimed: int) -> Path:
    """A Parquet file of ``rows`` rows whose footer says ``claimed``: the file's, the row group's and every column
    chunk's count (each an i64 field one after the one before: Thrift's compact header byte 0x16), all alike."""
    table = pa.table({"id": [f"r{i}" for i in range(rows)], "text": ["hello"] * rows})
    pq.write_table(table, path, row_group_size=rows, write_statistics=False)
    data = path.read_bytes()
    size = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - size : -8]
    told = b"\x16" + _varint(rows << 1)  # zigzag
    assert footer.count(told) == 4  # num_rows twice, num_values once per column
    new = footer.replace(told, b"\x16" + _varint(claimed << 1))
    path.write_bytes(data[: -8 - size] + new + len(new).to_bytes(4, "little") + b"PAR1")
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claimed=st.one_of(st.integers(301, 10_000), st.integers(10_000, 10**15)))
@example(claimed=10**12)  # the one found: the reader stood in for 10**12 rows, 21 GB in ten minutes
@example(claimed=10**7)  # within what the pages' bytes could hold: found when the pages end
def test_a_footer_that_counts_rows_that_are_not_there_is_refused_and_no_row_is_made_up(
    tmp_path: Path, claimed: int
) -> None:
    path = _lying(tmp_path / f"lying-{claimed}.parquet", 300, claimed)
    items = []
    with pytest.raises(InputError) as refused:
        sniff(path)
        for item in read_lines(path):
            items.append(item)
            assert len(items) <= 300, "a row made up"
    assert str(refused.value).startswith(f"{path} is damaged: its footer says ")
    assert "HINT: write it again from its source" in str(refused.value)
    assert not any(isinstance(item, BadLine) for item in items)  # the real rows, read as they are


def test_the_cli_refuses_a_footer_that_cannot_be_true_before_anything_and_stops_cleanly_at_one_that_is_found_out(
    tmp_path: Path,
) -> None:
    args = ["in.parquet", *SIM, "--template", "say {text}"]
    _lying(tmp_path / "in.parquet", 300, 10**12)
    run = run_cli(args, tmp_path, dict(os.environ), bound=60)
    assert run.code == 2 and "in.parquet is damaged" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "in.parquet.results.jsonl").exists()  # refused before anything is written
    _lying(tmp_path / "in.parquet", 300, 10**7)
    run = run_cli(args, tmp_path, dict(os.environ), bound=60)
    assert run.code == 2 and "in.parquet is damaged" in run.stderr and "Traceback" not in run.stderr, run.stderr
    lines = [r["line"] for r in read_jsonl(tmp_path / "in.parquet.results.jsonl")]
    assert lines and len(lines) == len(set(lines)) and max(lines) <= 300  # real rows only, each once
    assert read_jsonl(tmp_path / "in.parquet.results.errors.jsonl") == []  # no row made up


def test_a_parquet_file_with_two_columns_of_one_name_is_refused_naming_them(tmp_path: Path) -> None:
    table = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array([1, 2]), pa.array([3, 4])], names=["id", "x", "x"])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(InputError, match=r"dup\.parquet has more than one column named 'x'.*HINT: rename"):
        sniff(tmp_path / "dup.parquet")
