from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncbatch.input import reader as inputs
from asyncbatch.input.reader import BadLine, ParsedLine, count_lines, read_lines
from asyncbatch.store.checkpoint import DoneSet
from tests.helpers import batch_line


def _read(path: Path) -> list[ParsedLine | BadLine]:
    return list(read_lines(path))


def _done(*lines: int) -> DoneSet:
    done = DoneSet()
    for line in lines:
        done.add(line)
    return done


def test_formats_are_detected_per_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [
        batch_line("b1", "hello"),
        {"custom_id": "c1", "messages": [{"role": "user", "content": "hi"}]},
        {"id": 7, "company": "Acme"},
        {"company": "NoId"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = _read(path)
    assert [(i.line_no, i.custom_id, i.kind) for i in items if isinstance(i, ParsedLine)] == [
        (1, "b1", "batch"),
        (2, "c1", "chat"),
        (3, "7", "record"),
        (4, "line-4", "record"),
    ]


def test_bad_lines_name_their_line_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = json.dumps({"custom_id": "ok", "messages": [{"role": "user", "content": "x"}]})
    path.write_bytes(
        b"\n".join(
            [
                b"{not json",
                b"[1, 2]",
                b'{"messages": "hello"}',
                b'{"messages": [1]}',
                b'{"custom_id": 5, "messages": [{"role": "user"}]}',
                b'{"custom_id": "x", "method": "GET", "url": "/chat/completions", "body": {}}',
                b'{"custom_id": "y", "url": "/images/generations", "body": {"prompt": "a cat"}}',
                b'{"a": "\xff\xfe"}',
                good.encode(),
                good.encode(),
                b"",
            ]
        )
    )
    items = _read(path)
    bad = {i.line_no: i.reason for i in items if isinstance(i, BadLine)}
    assert sorted(bad) == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert "not valid JSON" in bad[1]
    assert "expected a JSON object, got list" in bad[2]
    assert "'messages' must be a non-empty list" in bad[3]
    assert "every item of 'messages'" in bad[4]
    assert "custom_id" in bad[5]
    assert "POST" in bad[6]
    assert "url" in bad[7]
    assert "UTF-8" in bad[8]
    assert "duplicate custom_id 'ok'" in bad[10]
    assert [i.line_no for i in items if isinstance(i, ParsedLine)] == [9]


def test_blank_lines_are_skipped_and_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "x": 1}\n\n   \r\n{"id": "b", "x": 2}')
    items = _read(path)
    assert [(i.line_no, i.custom_id) for i in items] == [(1, "a"), (4, "b")]


def test_overlong_line_is_reported_and_the_next_line_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 100)
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "big", "x": "y" * 5000}) + "\n" + json.dumps({"id": "small"}) + "\n")
    items = _read(path)
    assert isinstance(items[0], BadLine) and "longer than 100 bytes" in items[0].reason
    assert isinstance(items[1], ParsedLine) and (items[1].line_no, items[1].custom_id) == (2, "small")


@pytest.mark.parametrize(("data", "expected"), [(b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"\n\n", 2)])
def test_count_lines(tmp_path: Path, data: bytes, expected: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    assert count_lines(path, chunk=2) == expected


garbage = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" "))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.integers(0, 10_000).map(lambda n: ("good", n)), garbage.map(lambda g: ("junk", g)))))
def test_reader_never_crashes_and_keeps_every_good_line(tmp_path: Path, lines: list) -> None:
    """Random junk between good lines never crashes the reader, loses or duplicates a good line."""
    path = tmp_path / "fuzz.jsonl"
    expected = {}
    raw = []
    for number, (kind, value) in enumerate(lines, 1):
        if kind == "good":
            cid = f"g{number}"
            expected[number] = cid
            raw.append(json.dumps({"custom_id": cid, "messages": [{"role": "user", "content": str(value)}]}).encode())
        else:
            raw.append(value)
    path.write_bytes(b"\n".join(raw))
    parsed = [
        (i.line_no, i.custom_id) for i in read_lines(path) if isinstance(i, ParsedLine) and i.custom_id.startswith("g")
    ]
    assert sorted(parsed) == sorted(expected.items())


def test_skipped_done_lines_still_count_for_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [{"custom_id": "a", "messages": [{"role": "user", "content": "x"}]}, {"id": 5, "t": 1}, {"id": "a"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = list(read_lines(path, done=_done(1, 2)))
    assert [item[:3] for item in items] == [(3, "a", "duplicate custom_id 'a'")]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), cut=st.floats(0, 1), noise=st.binary(max_size=30))
def test_a_file_cut_at_any_byte_keeps_every_whole_line(tmp_path: Path, n: int, cut: float, noise: bytes) -> None:
    """A truncated (or garbage-tailed) input never crashes the reader or loses a complete line."""
    path = tmp_path / "cut.jsonl"
    lines = [
        json.dumps({"custom_id": f"c{i}", "messages": [{"role": "user", "content": "é" * i}]}).encode()
        for i in range(n)
    ]
    data = b"\n".join(lines) + b"\n"
    end = int(len(data) * cut)
    path.write_bytes(data[:end] + noise.replace(b"\n", b""))
    complete = data[:end].count(b"\n")
    parsed = [i for i in read_lines(path) if isinstance(i, ParsedLine)]
    assert [p.custom_id for p in parsed][:complete] == [f"c{i}" for i in range(complete)]
    assert len({p.custom_id for p in parsed}) == len(parsed)


def test_skipped_record_with_a_body_field_still_counts_its_id(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [{"id": "a", "body": "a record whose field is called body"}, {"id": "a", "x": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [item[:3] for item in read_lines(path, done=_done(1))] == [(2, "a", "duplicate custom_id 'a'")]


def test_duplicates_are_found_across_a_resume_from_the_id_log(tmp_path: Path) -> None:
    from asyncbatch.store.ids import IdLog

    path = tmp_path / "in.jsonl"
    rows = [{"id": "a", "t": 1}, {"id": "b", "t": 2}, {"id": "a", "t": 3}, {"id": "c", "t": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log_path = tmp_path / "ids"
    first = IdLog(log_path)
    items = read_lines(path, ids=first)
    assert [next(items).custom_id, next(items).custom_id] == ["a", "b"]  # a run reads two lines, then dies
    known, offset, _ = first.flush()
    prefix = first.hash
    first.close()
    assert offset == len(b"".join(json.dumps(r).encode() + b"\n" for r in rows[:2]))
    path.write_text(path.read_text() + json.dumps({"id": "b", "t": 5}) + "\n")  # appended meanwhile
    path.write_bytes(path.read_bytes().replace(b'{"id": "a", "t": 1}', b"not json, never read"))
    resumed = list(read_lines(path, done=_done(1), ids=IdLog(log_path, known=known, offset=offset, prefix=prefix)))
    # line 1 is done and recorded: skipped unread (its bytes no longer even parse); its id still counts
    assert [(i.line_no, type(i).__name__) for i in resumed] == [
        (2, "ParsedLine"),
        (3, "BadLine"),
        (4, "ParsedLine"),
        (5, "BadLine"),
    ]
    assert resumed[1].reason == "duplicate custom_id 'a'" and resumed[3].reason == "duplicate custom_id 'b'"


def test_the_id_set_is_compact_and_exact_on_what_it_holds() -> None:
    from asyncbatch.input.ids import IdSet, digest

    ids = IdSet()
    values = [digest(f"id-{i}") for i in range(50_000)]
    assert all(ids.add(v) for v in values)
    assert not any(ids.add(v) for v in values[::97])
    assert ids.count == 50_000
    assert digest("x") == digest("x") != digest("y")


def test_lines_from_an_offset_number_the_lines_as_the_whole_file_does(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1}\n\n{"id": 2}\n{"id": 3}\n')
    offsets = dict(inputs.line_offsets(path))
    assert [line.line_no for line in inputs.lines_from(path, offsets[3], 3)] == [3, 4]
    assert [line.custom_id for line in inputs.lines_from(path, 0, 1)] == ["1", "2", "3"]  # the BOM is dropped
