"""Generated answers at the HTTP boundary: the real CLI against a hostile server on 127.0.0.1.

A case is one input line and the replies the server gives it, attempt after attempt (then a good
answer): statuses 200, 4xx, 429 and 5xx; bodies that are answers, JSON nested past every bound
(in the body, in tool-call arguments), huge strings, invalid UTF-8, arbitrary JSON, text, nothing;
sent plain, gzip, deflate or raw deflate (bombs included), as a Content-Encoding that lies, cut
short, with a Content-Length that lies or none. A run puts many cases through the CLI at once
(``tests/scripted.py`` serves each request its case's next reply). Cases are drawn from a seeded
generator (``draw_trial``: each field from a menu of its edge values); a failing run is shrunk by
delta debugging (``shrink``), since every try is a CLI run.

Invariants, over every case: no traceback; only documented exit codes (and 0 or 1 here: nothing is
misconfigured); every input exactly once; every 200 the server sent recorded by its request id
(unless its input was asked again in that run); bounded RSS; no secret in any output or message; and
the same command run again sends nothing more.

Not counted as paid: a reply with bytes past its Content-Length. It is not an HTTP message, and
aiohttp refuses all of it, status and headers included, when the extra bytes arrive with it: no
request id to record, so it is asked again like a dropped connection. Bodies are decoded by
asyncbatch itself (``protocol.BodyDecoder``), so any Content-Encoding, read or refused, leaves the
status and request id known.

Secrets: ``SECRET_FORMS`` are the forms of the key planted in answers (raw today); add a form
(JSON-escaped, URL-encoded) and the "no secret" invariant looks for it in every output too.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from asyncbatch.simulator.invariants import (
    Run,
    exactly_once,
    lost_answers,
    recorded_ids,
    run_cli,
    run_problems,
    secrets_found,
)
from tests.fuzz.report import FuzzReport
from tests.scripted import Answer, Received, bomb, completion, nested, serve

KEY = "fuzz-answers-key-3c9e1a77b2"
# The forms of the key planted in generated answers. The redactor must mask each; a form is looked for
# as written in the outputs (a JSON-escaped form, once added, is looked for escaped and decoded alike).
SECRET_FORMS: list[Callable[[str], str]] = [lambda secret: secret]
LINES = 200  # cases per CLI run
MAX_RSS_MB = 400.0
MAX_RESPONSE_MB = 1
ARGS = [
    "--no-progress",
    "-c",
    "16",
    "--max-attempts",
    "3",
    "--backoff",
    "0",
    "--timeout",
    "10",
    "--max-wait",
    "5",
    "--max-outage",
    "30",
    "--max-response-mb",
    str(MAX_RESPONSE_MB),
    "--tpm",  # a quota given: a 429 closes the gate for its retry-after, and nothing is learned from it
    "100000000",
    "--rpm",
    "1000000",
]
TOOL = {
    "type": "function",
    "function": {"name": "label", "parameters": {"type": "object", "properties": {"label": {}}}},
}

# -- what the server may send ---------------------------------------------------------------------------

BODIES_200 = (
    *("answer", "answer", "answer", "deep", "args", "args-bad", "huge", "utf8", "json", "empty", "text", "bomb"),
    *("calls", "bigint"),  # two calls that differ; an integer past 64 bits
)
BODIES_ERROR = ("error", "error", "deep", "huge", "utf8", "json", "empty", "text", "bomb")
DEPTHS = (1, 2, 20, 100, 126, 127, 128, 129, 200, 254, 255, 300, 1023, 1024, 1100)
SIZES = (1_000, 64 * 1024, 300_000, 1_048_000, 1_048_577, 3_000_000)
BOMBS = (8 << 20, 64 << 20, 128 << 20)
ENCODINGS = ("identity", "identity", "gzip", "deflate", "raw-deflate", "lying", "br")
LENGTHS = ("true", "true", "true", "short", "long", "none")
ID_SUFFIXES = ("", "", "", '-"quoted\\"', "-\u00e9\u2713\U0001f600", "-" + "x" * 180)  # x-request-id as sent


@dataclass(frozen=True)
class Reply:
    """One reply to one attempt, as drawn: built into bytes by ``wire``."""

    status: int = 200
    body: str = "answer"
    depth: int = 1
    size: int = 1_000
    encoding: str = "identity"
    length: str = "true"
    cut: bool = False
    secret: int = -1  # plant SECRET_FORMS[secret] in the body (-1: none)
    seed: int = 0

    def __repr__(self) -> str:  # only what differs from a good answer: shrunk examples read short
        given = {k: v for k, v in self.__dict__.items() if v != getattr(Reply, k)}
        return f"Reply({', '.join(f'{k}={v!r}' for k, v in given.items())})"


@dataclass(frozen=True)
class Trial:
    """One CLI run: whether it forces a tool call, and each line's replies (then good answers)."""

    tools: bool
    cases: tuple[tuple[Reply, ...], ...]


def draw_reply(rng: random.Random) -> Reply:
    """One reply, drawn: mostly 200s, each field from a menu that holds its edge values."""
    status = rng.choice([200] * 12 + [400, 422, 408, 429, 429, 500, 500, 503])
    return Reply(
        status=status,
        body=rng.choice(BODIES_200 if status == 200 else BODIES_ERROR),
        depth=rng.choice(DEPTHS),
        size=rng.choice(SIZES),
        encoding=rng.choice(ENCODINGS),
        length=rng.choice(LENGTHS),
        cut=rng.random() < 0.15,
        secret=rng.choice([-1, -1, -1, *range(len(SECRET_FORMS))]),
        seed=rng.randrange(2**16),
    )


def draw_trial(rng: random.Random, lines: int) -> Trial:
    """``lines`` cases of 0 to 4 replies each (0: a good answer at once), with or without a forced tool call."""
    cases = tuple(tuple(draw_reply(rng) for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4]))) for _ in range(lines))
    return Trial(tools=rng.random() < 0.5, cases=cases)


# -- bytes on the wire -------------------------------------------------------------------------------


def wire(reply: Reply, request_id: str, tools: bool) -> Answer:
    """The bytes of ``reply``: its body, encoded, framed with a Content-Length that may lie."""
    body, encoding = _body(reply, tools), reply.encoding
    if reply.body == "bomb":
        encoding = "deflate" if reply.encoding == "deflate" else "gzip"
        body = bomb(reply.size if reply.size in BOMBS else BOMBS[reply.seed % len(BOMBS)], encoding)
    else:
        body = _encode(body, encoding)
    headers = [("Content-Type", "application/json")]
    if encoding != "identity":
        headers.append(("Content-Encoding", "gzip" if encoding == "lying" else encoding.removeprefix("raw-")))
    if reply.status == 429:
        headers.append(("retry-after-ms", str(reply.seed % 20)))
    length = {"true": None, "short": len(body) // 2, "long": len(body) * 2 + 1, "none": -1}[reply.length]
    cut = len(body) // 2 if reply.cut else None
    return Answer(reply.status, body, tuple(headers), length=length, cut=cut, request_id=request_id)


def _encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1, mtime=0)
    if encoding in ("deflate", "raw-deflate"):
        compressor = zlib.compressobj(1, zlib.DEFLATED, 15 if encoding == "deflate" else -15)
        return compressor.compress(body) + compressor.flush()
    return body  # identity; "lying" says gzip and sends it plain; "br" is not one asyncbatch asks for


def _body(reply: Reply, tools: bool) -> bytes:
    planted = SECRET_FORMS[reply.secret](KEY) if 0 <= reply.secret < len(SECRET_FORMS) else ""
    if reply.status != 200:
        return _error_body(reply, planted)
    arguments = json.dumps({"label": f"fine {planted}".strip()})
    if reply.body == "answer":
        return completion(f"answer {planted}".strip(), tool_arguments=arguments if tools else None)
    if reply.body == "deep":
        return completion("deep", tool_arguments=arguments if tools else None, extra=b'"deep": ' + nested(reply.depth))
    if reply.body == "args":
        deep = '{"label": ' + nested(reply.depth).decode() + "}"
        return completion(deep, tool_arguments=deep if tools else None)
    if reply.body == "args-bad":
        return completion("{'label':", tool_arguments="{'label': " if tools else None)
    if reply.body == "huge":
        return completion("h" * reply.size + planted, tool_arguments=arguments if tools else None)
    if reply.body == "utf8":
        return completion("u", tool_arguments=arguments if tools else None).replace(b'"u"', b'"\xff\xfe\xc3("')
    if reply.body == "calls":
        return completion("c", calls=(("label", arguments), ("label", '{"label": "other"}')) if tools else ())
    if reply.body == "bigint":
        big = '{"label": ' + str(10**19 * (reply.seed + 2)) + "}"
        return completion(big, tool_arguments=big if tools else None)
    return _other(reply, planted)


def _error_body(reply: Reply, planted: str) -> bytes:
    if reply.body == "error":
        message = f"simulated {reply.status} {planted}".strip()
        return json.dumps({"error": {"message": message, "code": f"c{reply.seed % 7}"}}).encode()
    if reply.body == "deep":
        return b'{"error": {"message": "deep", "code": "d"}, "x": ' + nested(reply.depth) + b"}"
    if reply.body == "huge":
        return json.dumps({"error": {"message": "m" * reply.size + planted}}).encode()
    if reply.body == "utf8":
        return b'{"error": {"message": "\xff\xfe bad ' + planted.encode() + b'"}}'
    return _other(reply, planted)


def _other(reply: Reply, planted: str) -> bytes:
    if reply.body == "json":
        return json.dumps(_arbitrary(random.Random(reply.seed), reply.depth % 8)).encode()
    if reply.body == "text":
        return f"<html><body>{reply.status} Bad Gateway {planted}</body></html>".encode()
    return b""  # "empty" (and "bomb", whose bytes ``wire`` makes)


def _arbitrary(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(7 if depth > 0 else 4)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 1.5, 10**30, -(10**20)])
    if kind == 1:
        return "".join(rng.choice('ab"\\\n\u00e9\u2028\U0001f600{[') for _ in range(rng.randrange(20)))
    if kind == 2:
        return rng.uniform(-1e300, 1e300)
    if kind == 3:
        return rng.randrange(-(2**63), 2**63)
    if kind in (4, 5):
        return [_arbitrary(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": _arbitrary(rng, depth - 1) for i in range(rng.randrange(4))}


# -- one run, checked ---------------------------------------------------------------------------------


@dataclass
class Checked:
    """What one trial broke, per invariant (each checked over the trial's cases)."""

    cases: int
    problems: dict[str, list[str]] = field(default_factory=dict)
    lines: set[int] = field(default_factory=set)  # the cases a problem names (a lost answer's), if any

    def saw(self, invariant: str, problems: list[str]) -> None:
        self.problems.setdefault(invariant, []).extend(problems)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())


def play(trial: Trial, work: Path) -> Checked:
    """Run ``trial`` through the CLI in ``work`` (then the same command again); check every invariant."""
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        {"custom_id": f"c{i}", "messages": [{"role": "user", "content": f"case {i}"}]} for i in range(len(trial.cases))
    ]
    (work / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["in.jsonl", *ARGS]
    if trial.tools:
        (work / "tool.json").write_text(json.dumps(TOOL))
        args += ["--tools", "tool.json"]
    attempts: dict[str, int] = {}
    given: dict[str, tuple[int, Reply]] = {}  # request id -> (case, the reply it was)
    numbers = itertools.count(1)

    def script(request: Received) -> Answer:
        n = attempts[request.prompt] = attempts.get(request.prompt, 0) + 1
        index = int(request.prompt.split()[-1]) if request.prompt.startswith("case ") else -1
        case = trial.cases[index] if 0 <= index < len(trial.cases) else ()
        reply = case[n - 1] if n <= len(case) else Reply()
        request_id = f"req-{next(numbers)}{ID_SUFFIXES[reply.seed % len(ID_SUFFIXES)]}"
        given[request_id] = index, reply
        return wire(reply, request_id, trial.tools)

    with serve(script) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_"))}
        env |= {"AZURE_OPENAI_ENDPOINT": server.url, "AZURE_OPENAI_API_KEY": KEY, "AZURE_OPENAI_DEPLOYMENT_NAME": "d"}
        runs = [run_cli(args, work, env, bound=180)]
        while runs[-1].code == 75 and len(runs) < 4:  # stopped resumably (a long outage): resume, as a user would
            runs.append(run_cli(args, work, env, bound=180))
        sent = len(server.received)
        again = run_cli(args, work, env, bound=60)
        more = len(server.received) - sent
    checked = _check(trial, work, runs, again, more)
    results, errors = work / "in.results.jsonl", work / "in.results.errors.jsonl"
    lost = lost_answers(server.journal, runs, recorded_ids(results, errors))
    checked.saw(
        "every paid answer recorded",
        [
            f"{e.request_id} of case {given[str(e.request_id)][0]} ({given[str(e.request_id)][1]!r}) is in no output"
            for e in lost
        ],
    )
    checked.lines |= {given[str(e.request_id)][0] for e in lost}
    return checked


def _check(trial: Trial, work: Path, runs: list[Run], again: Run, more: int) -> Checked:
    results, errors = work / "in.results.jsonl", work / "in.results.errors.jsonl"
    checked = Checked(len(trial.cases))
    everything = [*runs, again]
    checked.saw(
        "no traceback, documented exits, bounded RSS",
        [p for i, r in enumerate(everything, 1) for p in run_problems(i, r, MAX_RSS_MB)],
    )
    checked.saw("exit 0 or 1", [f"exit {r.code}: {_tail(r.stderr)}" for r in everything if r.code not in (0, 1)])
    checked.saw("every input exactly once", exactly_once(work / "in.jsonl", results, errors))
    checked.saw("the same command sends nothing more", [f"{more} requests sent again"] if more else [])
    forms = [KEY, *(form(KEY) for form in SECRET_FORMS)]
    checked.saw("no secret", secrets_found(forms, [work], everything))
    checked.saw("every output is what the model wrote", _outputs_problems(results, trial.tools))
    return checked


def _outputs_problems(results: Path, tools: bool) -> list[str]:
    """Each result's ``output`` against its own answer, read by Python's parser (integers unbounded): the tool
    call's arguments, kind for kind, in every call (or the text)."""
    problems = []
    for line in results.read_text().splitlines() if results.exists() else ():
        record = json.loads(line)
        message = record["response"]["body"]["choices"][0]["message"]
        said = [json.loads(c["function"]["arguments"]) for c in message.get("tool_calls") or ()] if tools else []
        expected = said[0] if tools and said else message.get("content")
        if not _same(record["output"], expected) or any(not _same(s, expected) for s in said):
            problems.append(
                f"line {record['line']}: output {record['output']!r} where the model said {said or expected!r}"
            )
    return problems


def _same(a: object, b: object) -> bool:
    """Equal, and of the same JSON kind all the way down (1 is not 1.0), keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # keys in the same order too
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def shrink(trial: Trial, work: Path, implicated: set[int], budget: int = 24) -> Trial:
    """A smaller trial that still breaks an invariant: the cases a problem named (else halves), then fewer replies.

    Each try is a CLI run, so this is delta debugging with a budget, not hypothesis's shrinker.
    """
    tries = itertools.count()

    def fails(candidate: Trial) -> bool:
        n = next(tries)
        return n < budget and not play(candidate, work / f"shrink-{n}").ok

    cases = [trial.cases[i] for i in sorted(implicated)] if implicated else list(trial.cases)
    if implicated and not fails(Trial(trial.tools, tuple(cases))):
        cases = list(trial.cases)  # the named cases alone do not fail: the others play a part
    while len(cases) > 1:
        half = len(cases) // 2
        smaller = next((part for part in (cases[:half], cases[half:]) if fails(Trial(trial.tools, tuple(part)))), None)
        if smaller is None:
            break
        cases = smaller
    for i, case in enumerate(cases):
        for j in reversed(range(len(case))):
            fewer = [*cases[:i], case[:j] + case[j + 1 :], *cases[i + 1 :]]
            if fails(Trial(trial.tools, tuple(fewer))):
                cases, case = fewer, case[:j] + case[j + 1 :]
    return Trial(trial.tools, tuple(cases))


def _tail(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-3:])


# -- the boundary's entry point ------------------------------------------------------------------------


def fuzz(cases: int, seed: int = 0) -> FuzzReport:
    """Try ``cases`` generated cases (in CLI runs of up to ``LINES``) against every invariant.

    The first failing run is shrunk (``shrink``) and reported last, as a trial to keep in
    ``tests/test_fuzz_answers.py``.
    """
    report = FuzzReport("answers")
    rng = random.Random(seed)
    lines = max(1, min(cases, LINES))
    work = Path(tempfile.mkdtemp(prefix="fuzz-answers-"))
    failing: list[tuple[Trial, Checked]] = []
    try:
        for run in range(max(1, math.ceil(cases / lines))):
            trial = draw_trial(rng, min(lines, cases - run * lines) or lines)
            checked = play(trial, work / f"run-{run}")
            report.cases += checked.cases
            for invariant, problems in checked.problems.items():
                report.checked[invariant] = report.checked.get(invariant, 0) + checked.cases
                report.violations += [f"{invariant}: {p}" for p in problems]
            if not checked.ok and not failing:
                failing.append((trial, checked))
            shutil.rmtree(work / f"run-{run}", ignore_errors=True)
        if failing:
            trial, checked = failing[0]
            report.violations.append(f"shrunk to: {shrink(trial, work / 'shrink', checked.lines)!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
