"""What one boundary's fuzzing found: how many generated cases ran, and every invariant they broke."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FuzzReport:
    """Counts for one boundary. ``violations`` holds one line per broken invariant, with the case that broke it."""

    boundary: str
    cases: int = 0
    violations: list[str] = field(default_factory=list)
    # Per invariant: how many cases it was checked on (for the printed table).
    checked: dict[str, int] = field(default_factory=dict)

    def saw(self, invariant: str, problem: str | None, case: object) -> None:
        """Count one check of ``invariant`` on ``case``; ``problem`` is what broke, or None."""
        self.checked[invariant] = self.checked.get(invariant, 0) + 1
        if problem is not None:
            self.violations.append(f"{invariant}: {problem} (case: {_short(case)})")

    @property
    def ok(self) -> bool:
        return not self.violations


def _short(case: object) -> str:
    text = repr(case)
    return text if len(text) <= 300 else text[:297] + "..."
