"""How xdist shares the suite between workers: one work unit per test file, the memory-heavy files one unit."""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling


class HeavyTogether(LoadFileScheduling):
    """LoadFileScheduling, with the files in `heavy` one work unit (their peaks never add up). Units go out largest
    first (xdist's order by test count), so the long heavy unit starts at once instead of ending the run."""

    def __init__(self, config, log, heavy: tuple[str, ...]) -> None:
        super().__init__(config, log)
        self._heavy = frozenset(heavy)

    def _split_scope(self, nodeid: str) -> str:
        path = super()._split_scope(nodeid)
        return "heavy" if path in self._heavy else path
