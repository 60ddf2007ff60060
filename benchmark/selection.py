"""``bench run --defenses/--attacks``: run a subset of a suite's entries in its run folder.

The subset only narrows which pairs run; the plan, the keys and the suite stay whole, so the records
of the other entries are left as they are and the report still reads every record of the folder. With
``--seeds`` (or ``--set seeds=...``) it adds seeds for some entries without a new suite file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inversion_bench.errors import ConfigError
from inversion_bench.plan import PairJob


@dataclass(frozen=True)
class Selection:
    """The entry ids to run (``None``: every entry of that kind)."""

    defenses: frozenset[str] | None = None
    attacks: frozenset[str] | None = None

    def keeps(self, pair: PairJob) -> bool:
        return ((self.defenses is None or pair.defense in self.defenses)
                and (self.attacks is None or pair.attack in self.attacks))

    def filter(self, pairs: Sequence[PairJob]) -> list[PairJob]:
        return [p for p in pairs if self.keeps(p)]


def parse_ids(option: str, text: str | None, choices: Sequence[str], source: str) -> frozenset[str] | None:
    """The ids of a comma-separated ``text`` given to ``option``; None when ``text`` is None.

    Raises:
        ConfigError: an empty list, or an id that is not one of ``choices`` (the suite's entry ids).
    """
    if text is None:
        return None
    ids = [x.strip() for x in text.split(",") if x.strip()]
    if not ids:
        raise ConfigError(f"{option} {text!r}: give entry ids separated by commas; choices: {', '.join(choices)}")
    unknown = [x for x in ids if x not in choices]
    if unknown:
        what = "is not an entry" if len(unknown) == 1 else "are not entries"
        raise ConfigError(f"{option}: {', '.join(unknown)} {what} of {source}; choices: {', '.join(choices)}")
    return frozenset(ids)


def selection(defenses: str | None, attacks: str | None, defense_ids: Sequence[str], attack_ids: Sequence[str],
              source: str) -> Selection | None:
    """The :class:`Selection` of ``--defenses``/``--attacks`` (None when neither is given)."""
    if defenses is None and attacks is None:
        return None
    return Selection(parse_ids("--defenses", defenses, defense_ids, source),
                     parse_ids("--attacks", attacks, attack_ids, source))
