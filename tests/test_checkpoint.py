from __future__ import annotations

import base64
import hashlib
import json
import tracemalloc
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asyncbatch.config import Outputs, StatePaths, fingerprint
from asyncbatch.errors import ConfigError
from asyncbatch.input.ids import line_digest
from asyncbatch.store.checkpoint import (
    MAX_LINE,
    Checkpoint,
    CheckpointUnreadable,
    DoneSet,
    PrefixHash,
    SentJournal,
    changed_parts,
    drop_errors,
    recover,
    save_checkpoint,
)
from asyncbatch.store.files import cut, move_aside, torn_tail

FP = {"deployment": "x", "template": "t"}
INPUT = Path(__file__)  # an input that exists; the checkpoints here have read none of it


def _ckpt(done: DoneSet | None = None, **fields: object) -> Checkpoint:
    values: dict[str, object] = {
        "fingerprint": FP,
        "done": done or DoneSet(),
        "results_offset": 0,
        "errors_offset": 0,
        "results_lines": 0,
        "errors_lines": 0,
        "ids_lines": 0,
        "input_offset": 0,
        "input_hash": _hash(b""),
    }
    return Checkpoint(**{**values, **fields})  # type: ignore[arg-type]


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _paths(d: Path) -> StatePaths:
    """The state directory of results ``d / "r"``, with the checkpoint at ``d / "c"``."""
    paths = StatePaths.beside(d / "r", d / "c")
    paths.dir.mkdir(exist_ok=True)
    return paths


def _outputs(results: Path, errors: Path, d: Path) -> Outputs:
    _paths(d)
    return Outputs(results=results, errors=errors, checkpoint=d / "c")


def _records(path: Path, lines: list[int], code: str | None = None) -> bytes:
    data = b"".join(
        orjson.dumps({"id": f"batch_req_{n}", "line": n, "error": {"code": code} if code else None}) + b"\n"
        for n in lines
    )
    with path.open("ab") as f:
        f.write(data)
    return data


def test_doneset_add_discard_and_roundtrip() -> None:
    done = DoneSet()
    for n in (1, 7, 8, 1_000_000, 7):
        done.add(n)
    done.discard(8)
    done.discard(99)  # absent: nothing happens
    assert len(done) == 3 and 7 in done and 8 not in done and 1_000_000 in done and 2_000_000 not in done
    copy = DoneSet.decode(done.encode())
    assert len(copy) == 3 and all(n in copy for n in (1, 7, 1_000_000))


def test_doneset_for_a_million_lines_is_small() -> None:
    done = DoneSet()
    for n in range(1, 1_000_001):
        done.add(n)
    assert len(done) == 1_000_000
    assert len(done._bits) < 250_000  # bytes; geometric growth at most doubles the 125 kB needed
    assert len(done.encode()) < 2_000  # a full bitmap compresses to almost nothing


@pytest.mark.parametrize(
    ("content", "kept"), [(b"", b""), (b"a\nb", b"a\n"), (b"a\nb\n", b"a\nb\n"), (b"torn", b""), (b"\n", b"\n")]
)
def test_torn_tail_measures_and_cut_removes_it(tmp_path: Path, content: bytes, kept: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    tail = torn_tail(path)
    assert tail == len(content) - len(kept) and path.read_bytes() == content  # measuring changes nothing
    cut(path, tail)
    assert path.read_bytes() == kept


def test_fingerprint_names_each_option() -> None:
    first = fingerprint({"template": "A {x}", "deployment": "d"})
    assert fingerprint({"template": "A {x}", "deployment": "d"}) == first
    assert changed_parts(first, fingerprint({"template": "B {x}", "deployment": "d"})) == ["template"]


def test_the_read_prefix_of_the_input_may_grow_but_not_change(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    saved = _hash(b'{"a": 1}\n')
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')  # appended: the first 9 bytes are the same
    assert PrefixHash.matching(path, 9, saved) is not None
    path.write_text('{"a": 7}\n{"a": 2}\n')  # same size, other bytes
    assert PrefixHash.matching(path, 9, saved) is None
    path.write_text('{"a"')  # shorter than what was read
    assert PrefixHash.matching(path, 9, saved) is None


def test_recover_fresh(tmp_path: Path) -> None:
    state = recover(INPUT, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), FP)
    assert (state.source, len(state.done), state.notes) == ("fresh", 0, [])


def test_recover_from_checkpoint_scans_only_what_came_after(tmp_path: Path) -> None:
    results, errors, ckpt = tmp_path / "r", tmp_path / "e", tmp_path / "c"
    done = DoneSet()
    first = _records(results, [1, 2, 3])
    for n in (1, 2, 3):
        done.add(n)
    save_checkpoint(ckpt, _ckpt(done, results_offset=len(first), results_lines=3))
    journal = SentJournal(_paths(tmp_path).sent)
    for n in (4, 5, 9, 10):
        journal.sent(n)
    journal.recorded([10])
    journal.reset()  # a checkpoint: 10 was recorded, the others are still out
    journal.close()
    _records(results, [4])
    _records(errors, [5], code="http_500")
    state = recover(INPUT, _outputs(results, errors, tmp_path), FP)
    assert state.source == "checkpoint"
    assert sorted(n for n in range(12) if n in state.done) == [1, 2, 3, 4, 5]
    assert (state.results_lines, state.errors_lines) == (4, 1)
    assert state.resent == 1  # line 9 was in flight and never recorded


def test_checkpoint_ahead_of_a_damaged_output_is_not_trusted(tmp_path: Path) -> None:
    results, errors, ckpt = tmp_path / "r", tmp_path / "e", tmp_path / "c"
    data = _records(results, [1, 2, 3])
    bogus = DoneSet()
    for n in range(1, 50):
        bogus.add(n)
    save_checkpoint(ckpt, _ckpt(bogus, results_offset=len(data) + 500, results_lines=49))
    state = recover(INPUT, _outputs(results, errors, tmp_path), FP)
    assert state.source == "rebuilt" and len(state.done) == 3 and state.results_lines == 3


def test_garbage_checkpoint_means_rebuild(tmp_path: Path) -> None:
    results, ckpt = tmp_path / "r", tmp_path / "c"
    _records(results, [4, 6])
    ckpt.write_bytes(b"\x00garbage")
    state = recover(INPUT, _outputs(results, tmp_path / "e", tmp_path), FP)
    assert state.source == "rebuilt" and sorted(n for n in range(10) if n in state.done) == [4, 6]


def test_a_done_set_that_inflates_past_every_line_means_rebuild(tmp_path: Path) -> None:
    """A checkpoint's done-set is zlib: a damaged (or crafted) one inflated without bound (1 kB to gigabytes)."""
    results, ckpt = tmp_path / "r", tmp_path / "c"
    _records(results, [4, 6])
    bomb = zlib.compress(bytes(MAX_LINE // 8 + 2), 9)  # a done-set past MAX_LINE lines: none this version writes
    saved = orjson.loads(_ckpt().to_bytes()) | {"done": base64.b64encode(bomb).decode()}
    ckpt.write_bytes(orjson.dumps(saved))
    state = recover(INPUT, _outputs(results, tmp_path / "e", tmp_path), FP)
    assert state.source == "rebuilt" and sorted(n for n in range(10) if n in state.done) == [4, 6]
    assert len(bomb) < MAX_LINE // 8 // 500


def test_checkpoint_roundtrips_and_any_missing_or_unknown_field_means_rebuild(tmp_path: Path) -> None:
    done = DoneSet()
    done.add(3)
    original = _ckpt(done, results_offset=10, ids_lines=4)
    copy = Checkpoint.from_bytes(original.to_bytes())
    assert copy.results_offset == 10 and copy.ids_lines == 4 and 3 in copy.done
    data = json.loads(original.to_bytes())
    for broken in (
        {k: v for k, v in data.items() if k != "errors_lines"},
        {**data, "extra": 1},
        {**data, "version": 1},
    ):
        with pytest.raises(CheckpointUnreadable):
            Checkpoint.from_bytes(json.dumps(broken).encode())
    results, ckpt = tmp_path / "r", tmp_path / "c"
    _records(results, [3, 5])
    ckpt.write_text(json.dumps({k: v for k, v in data.items() if k != "errors_lines"}))
    state = recover(INPUT, _outputs(results, tmp_path / "e", tmp_path), FP)
    assert state.source == "rebuilt" and len(state.done) == 2
    assert any("errors_lines" in note and "rebuilding" in note for note in state.notes)


def test_the_checkpoint_keeps_its_input_and_one_written_before_it_did_is_still_read() -> None:
    original = _ckpt()
    original.input = "/data/items.jsonl"
    assert Checkpoint.from_bytes(original.to_bytes()).input == "/data/items.jsonl"
    older = {k: v for k, v in json.loads(original.to_bytes()).items() if k != "input"}
    assert Checkpoint.from_bytes(json.dumps({**older, "version": 3}).encode()).input is None
    with pytest.raises(CheckpointUnreadable):
        Checkpoint.from_bytes(json.dumps({**older, "input": 7}).encode())


def test_changed_fingerprint_is_refused_naming_what_changed(tmp_path: Path) -> None:
    ckpt = tmp_path / "c"
    save_checkpoint(ckpt, _ckpt())
    other = {**FP, "template": "other"}
    state = recover(INPUT, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), other)  # nothing succeeded: go on
    assert any("template changed" in note for note in state.notes)
    results = tmp_path / "r"
    _records(results, [1])
    save_checkpoint(ckpt, _ckpt(results_offset=results.stat().st_size, results_lines=1))
    with pytest.raises(ConfigError, match=r"template changed.*1 results.*accept_changes=True.*restart=True"):
        recover(INPUT, _outputs(results, tmp_path / "e", tmp_path), other)
    state = recover(INPUT, _outputs(results, tmp_path / "e", tmp_path), other, accept_changes=True)
    assert state.changed == ["template"]


def test_a_changed_input_is_refused_but_an_appended_one_is_not(tmp_path: Path) -> None:
    path, ckpt = tmp_path / "in.jsonl", tmp_path / "c"
    path.write_text("line one\n")
    save_checkpoint(ckpt, _ckpt(input_offset=9, input_hash=_hash(b"line one\n")))
    path.write_text("line one\nline two\n")
    assert recover(path, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), FP).prefix is not None
    path.write_text("line 1!!\nline two\n")  # line 1 changed, but nothing of it was recorded: it runs as it is now
    assert recover(path, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), FP).prefix is None
    digest = f"{line_digest(b'line one'):016x}"
    record = {"id": "batch_req_1", "line": 1, "line_hash": digest, "error": None}
    (tmp_path / "r").write_bytes(orjson.dumps(record) + b"\n")  # now its answer is recorded
    save_checkpoint(ckpt, _ckpt(input_offset=9, input_hash=_hash(b"line one\n")))
    with pytest.raises(ConfigError, match=r"in.jsonl changed at line 1, and its answer is recorded"):
        recover(path, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), FP)
    (tmp_path / "r").write_bytes(orjson.dumps({**record, "line_hash": None}) + b"\n")
    with pytest.raises(ConfigError, match=r"changed at line 1, and its record has no digest"):
        recover(path, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), FP)


def test_a_record_past_the_inputs_end_sizes_nothing_when_a_changed_input_is_compared(tmp_path: Path) -> None:
    """A damaged record's number (up to ``MAX_LINE``) sized the comparison's arrays: 9 bytes a line, 4.5 GB here."""
    path, ckpt = tmp_path / "in.jsonl", tmp_path / "c"
    path.write_text("line one\nline two\n")
    digest = f"{line_digest(b'line one'):016x}"
    far = {"id": "batch_req_2", "line": 500_000_000, "line_hash": digest, "error": {"code": "http_500"}}
    (tmp_path / "e").write_bytes(orjson.dumps(far) + b"\n")
    save_checkpoint(ckpt, _ckpt(input_offset=9, input_hash=_hash(b"line ONE\n")))  # the input changed since
    tracemalloc.start()
    try:
        state = recover(path, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), FP, retry_failed=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert state.prefix is None and peak < 100 * 2**20  # the bitmap of done lines alone: 62.5 MB


def test_foreign_line_in_an_output_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "r").write_text('{"not": "ours"}\n')
    with pytest.raises(ConfigError, match="not an asyncbatch record"):
        recover(INPUT, _outputs(tmp_path / "r", tmp_path / "e", tmp_path), FP)


def test_drop_errors_removes_the_picked_lines_and_the_checkpoint(tmp_path: Path) -> None:
    results, errors, ckpt = tmp_path / "r", tmp_path / "e", tmp_path / "c"
    _records(errors, [2], code="invalid_input")
    _records(errors, [3, 4], code="http_500")
    ckpt.write_text("{}")
    state = recover(INPUT, _outputs(results, errors, tmp_path), FP)
    assert drop_errors(errors, ckpt, state, lambda record: record["error"]["code"] != "invalid_input") == 2
    assert [json.loads(x)["line"] for x in errors.read_text().splitlines()] == [2]
    assert 2 in state.done and 3 not in state.done and 4 not in state.done
    assert not ckpt.exists() and state.errors_lines == 1


def test_move_aside_renames_and_never_overwrites(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text("1")
    ((_, first),) = move_aside([a, tmp_path / "missing"])
    a.write_text("2")
    ((_, second),) = move_aside([a])
    assert not a.exists() and first != second
    assert {first.read_text(), second.read_text()} == {"1", "2"}


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_results=st.integers(0, 30),
    n_errors=st.integers(0, 10),
    cut_r=st.floats(0, 1),
    cut_e=st.floats(0, 1),
    stale_at=st.floats(0, 1),
)
def test_cut_at_any_byte_then_recover(
    tmp_path_factory: pytest.TempPathFactory,
    n_results: int,
    n_errors: int,
    cut_r: float,
    cut_e: float,
    stale_at: float,
) -> None:
    """kill -9 can stop a write at any byte: recovery keeps exactly the whole lines, with or without a checkpoint."""
    d = tmp_path_factory.mktemp("cut")
    results, errors, ckpt = d / "r", d / "e", _paths(d).checkpoint
    r_lines, e_lines = list(range(1, n_results + 1)), list(range(100, 100 + n_errors))
    r_data = _records(results, r_lines)
    e_data = _records(errors, e_lines, code="http_500")
    # a checkpoint taken earlier, at a line boundary
    r_ck = int(stale_at * n_results)
    done = DoneSet()
    for n in r_lines[:r_ck]:
        done.add(n)
    r_off = sum(len(x) + 1 for x in r_data.split(b"\n")[:r_ck])
    save_checkpoint(ckpt, _ckpt(done, results_offset=r_off, results_lines=r_ck))
    for path, data, frac in ((results, r_data, cut_r), (errors, e_data, cut_e)):
        path.write_bytes(data[: int(len(data) * frac)])
    state = recover(INPUT, _outputs(results, errors, d), FP)
    whole_r = [json.loads(x)["line"] for x in results.read_bytes().splitlines()]
    whole_e = [json.loads(x)["line"] for x in errors.read_bytes().splitlines()]
    assert whole_r == r_lines[: len(whole_r)] and whole_e == e_lines[: len(whole_e)]  # only torn tails were cut
    assert sorted(n for n in range(200) if n in state.done) == sorted(whole_r + whole_e)
    assert (state.results_lines, state.errors_lines) == (len(whole_r), len(whole_e))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 12),
    at=st.floats(0, 1),
    damage=st.one_of(
        st.binary(min_size=1, max_size=12),
        st.sampled_from([b"{}", b"null", b'{"line": -1}', b'{"line": "7"}', b'{"line": true}', b'{"line": 2.5}']).map(
            lambda b: b"\n" + b + b"\n"
        ),
        st.one_of(st.integers(-(10**30), 10**4), st.integers(MAX_LINE + 1, 10**30)).map(
            lambda n: b'\n{"line": %d}\n' % n
        ),  # a number a line may have (not up to MAX_LINE: a bitmap that long takes a while), or none may
    ),
)
@example(n=9, at=0.9, damage=b'\n{"line": -1}\n')  # marked the bitmap's last byte: line 15 "done", never run
@example(n=3, at=0.5, damage=b'\n{"line": 99999999999999999999}\n')  # OverflowError, a traceback at resume
def test_damage_in_the_middle_of_an_output_is_refused_or_every_record_counts_exactly(
    tmp_path_factory: pytest.TempPathFactory, n: int, at: float, damage: bytes
) -> None:
    """Bytes from disk: a damaged output is refused whole, naming it (nothing changed), or read exactly."""
    d = tmp_path_factory.mktemp("damage")
    results, errors = d / "r", d / "e"
    data = _records(results, list(range(1, n + 1)))
    whole = data.splitlines(keepends=True)
    cut_at = len(b"".join(whole[: int(n * at)])) if damage.startswith(b"\n") else int(len(data) * at)
    results.write_bytes(data[:cut_at] + damage.removeprefix(b"\n") + data[cut_at:])  # a line, or bytes anywhere
    before = results.read_bytes()
    try:
        state = recover(INPUT, _outputs(results, errors, d), FP)
    except ConfigError as refused:
        assert str(results) in str(refused) and results.read_bytes() == before
        return
    lines = [orjson.loads(raw)["line"] for raw in results.read_bytes().splitlines()]
    assert all(type(line) is int and 0 <= line <= MAX_LINE for line in lines)
    assert all(line in state.done for line in lines) and len(state.done) == len(set(lines))  # no other line
