"""A quick sample of generated input files (tests/fuzz/inputs.py): every invariant holds, every kept example too.

``python benchmarks/bench_fuzz.py --only inputs`` runs thousands.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncbatch.input import reader
from tests.fuzz import inputs


def test_a_quick_sample_of_generated_input_files_breaks_no_invariant() -> None:
    report = inputs.fuzz(60, seed=20261201, e2e_share=0.05)
    assert report.ok, "\n".join(report.violations)
    assert report.cases >= 60 + len(inputs.EXAMPLES)
    checked = set(report.checked)
    assert {"no traceback", "exactly once", "one encoding rule"} <= checked
    assert {"documented exits", "every answer recorded"} <= checked  # some ran whole, against the simulator


@pytest.mark.parametrize("case", inputs.EXAMPLES, ids=lambda case: f"{case.name}-{len(case.data)}")
def test_every_kept_example_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: inputs.Case) -> None:
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", inputs.LIMIT)
    broken: list[str] = []

    def saw(invariant: str, problem: str | None) -> None:
        if problem is not None:
            broken.append(f"{invariant}: {problem}")

    inputs.check(case, tmp_path, saw)
    assert not broken
