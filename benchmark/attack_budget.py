"""What one run of an attack spends at most, stated in the report's cost table.

An attack plugin states it with an optional method ``budget(self) -> AttackBudget`` computed from its
parameters (every built-in attack has one); attacks without it show "—" in the cost table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AttackBudget:
    """What one run of an attack spends at most, stated from its parameters (the report's cost table).

    Attributes:
        text: the budget, e.g. ``"300 steps x 4 restarts per identity"``.
        early_stop: the attack's early-stop rule and when it cannot trigger (then the whole budget is
            spent), e.g. a confidence threshold that a smoothed target never reaches; None without one.
    """

    text: str
    early_stop: str | None = None

    def as_info(self) -> dict[str, str]:
        """The record's ``attack_info`` entries: ``budget`` and, with one, ``early_stop``."""
        return {"budget": self.text, **({"early_stop": self.early_stop} if self.early_stop else {})}


def stated_budget(attack: Any) -> AttackBudget | None:
    """The attack's :class:`AttackBudget` (its ``budget()`` method), None when it states none."""
    method = getattr(attack, "budget", None)
    return method() if callable(method) else None
