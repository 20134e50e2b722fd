"""The house's rules that a reader cannot see from one file: each decision in one place, and nothing reaching across."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import asyncbatch
from asyncbatch.errors import AttemptError

PACKAGE = Path(asyncbatch.__file__).parent
TESTS = Path(__file__).parent

# A status number compared: ``status == 429``, ``status_code >= 500``, ``400 <= status``, ``status in (401, 403)``.
STATUS_COMPARED = re.compile(
    r"status\w*\s*(==|!=|<=|>=|<|>)\s*\d|\d\s*(==|!=|<=|>=|<|>)\s*\w*status|status\w*\s+(not\s+)?in\s*[({\[]\s*\d"
    r"|>=\s*500\b|\bin\s*\(\s*4\d\d"
)


def _code(path: Path) -> str:
    """The module's code without its comments and strings: what it does, not what it says."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.unparse(tree)


def _modules(*under: str) -> list[Path]:
    return sorted(p for place in under for p in (PACKAGE / place).rglob("*.py")) if under else []


def test_no_module_but_protocol_compares_a_status_number() -> None:
    """Statuses become exception classes in ``protocol.py`` alone; everything past it reacts by class."""
    compared = [
        f"{path.relative_to(PACKAGE)}: {match.group(0)}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "protocol.py"
        for match in STATUS_COMPARED.finditer(_code(path))
    ]
    assert compared == []
    assert STATUS_COMPARED.search("if exc.status == THROTTLED or status >= 500 or 400 <= e.status < 500")


def test_an_attempt_error_is_its_class_not_a_bag_of_flags() -> None:
    error = AttemptError("x", "x")
    assert not hasattr(error, "retryable") and not hasattr(error, "held")


def test_one_endpoint_is_a_pool_of_one_nothing_under_live_asks_whether_it_is_a_pool() -> None:
    asked = [p.name for p in _modules("live") if re.search(r"\bpooled\b", _code(p))]
    assert asked == []


def test_admission_s_readiness_is_computed_in_one_function() -> None:
    """Every gate is asked in ``Admission.readiness`` alone; the router waits on it and nothing else."""
    callers = []
    for path in _modules("admission", "live"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                calls = {
                    c.func.attr for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                }
                if "_gates" in calls:
                    callers.append(node.name)
    assert callers == ["readiness"]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, resolved to its dotted name in the package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(f"{base}.{node.module}".strip(".") if node.module else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_configuration_and_the_input_reach_nothing_of_the_store() -> None:
    reaching = {
        str(path.relative_to(PACKAGE)): sorted(m for m in _imports(path) if m.startswith("asyncbatch.store"))
        for path in [PACKAGE / "config.py", *_modules("input")]
    }
    assert {name: found for name, found in reaching.items() if found} == {}


def test_the_tests_keep_one_fake_clock() -> None:
    """``helpers.FakeClock``: a second one would drift from it (the tests once had five)."""
    clocks = [
        f"{path.name}: {node.name}"
        for path in TESTS.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and not node.name.startswith("_")  # its own loop and selector are part of it
        and {"now", "sleep"} & {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
        and any(isinstance(f, ast.FunctionDef) and f.name in ("__call__", "sleep", "time") for f in node.body)
    ]
    assert clocks == ["helpers.py: FakeClock"]


def test_each_option_is_declared_once_and_names_a_field_of_the_configuration() -> None:
    """One table (``cli.parser.OPTIONS``) makes the parser, each ``RunConfig`` section and docs/options.md."""
    import dataclasses

    from asyncbatch.cli.parser import OPTIONS, SECTIONS, build_parser

    flags = [flag for option in OPTIONS for flag in option.flags]
    assert len(flags) == len(set(flags))
    for option in OPTIONS:
        if option.field is not None:
            section, _, name = option.field.rpartition(".")
            assert name in {f.name for f in dataclasses.fields(SECTIONS[section])}, option.field
    args = build_parser().parse_args(["x.jsonl", "--timeout", "7", "--no-feedback", "-c", "3"])
    from asyncbatch.cli.parser import sections

    made = sections(args)
    assert (made["transport"]["timeout"], made["request"]["feedback"], made["limits"]["concurrency"]) == (7.0, False, 3)
