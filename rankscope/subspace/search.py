"""The d90 search: the smallest subspace dimension d whose seed-averaged metric reaches the target.

Target conventions (``result.json`` names the one used):

* ``relative`` (default; Li et al. 2018's d_int90 and Aghajanyan et al. 2021): ``threshold × baseline``,
  the baseline being the seed-averaged metric of ordinary training of every parameter with the same
  loop (or a value given with ``baseline=``);
* ``absolute``: a fixed metric value (``target_absolute=0.9`` is "90 % test accuracy").

Search (assumes the metric grows with d, as it does on average): a geometric sweep from ``d_start``
by ``factor`` brackets the answer (``lo`` fails, ``hi`` reaches the target; downward when ``d_start``
already succeeds), then bisection in log d (``mid = round(√(lo·hi))``) until ``hi − lo ≤ 1`` or
``hi/lo ≤ 1 + tolerance``; d90 is ``hi``.  Each evaluated d costs ``seeds`` training runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SearchOutcome:
    """d90 (None when even ``d_max`` falls short), its bracket and every evaluated (d, mean metric)."""

    d90: int | None
    bracket: tuple[int | None, int | None]
    evaluated: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"d90": self.d90, "bracket": list(self.bracket), "evaluated": dict(sorted(self.evaluated.items()))}


def find_d90(mean_metric: Callable[[int], float], target: float, d_min: int, d_max: int, *, d_start: int = 10,
             factor: float = 2.0, tolerance: float = 0.0) -> SearchOutcome:
    """Smallest d in ``[d_min, d_max]`` with ``mean_metric(d) >= target`` (see module docstring).

    ``bracket = (lo, hi)``: ``lo`` is the largest evaluated d below the target (``d_min − 1`` when
    ``d_min`` itself reaches it), ``hi`` the smallest evaluated d that reaches it.
    """
    if not 1 <= d_min <= d_max:
        raise ValueError(f"need 1 <= d_min <= d_max, got {d_min}, {d_max}")
    if factor <= 1:
        raise ValueError(f"factor must exceed 1, got {factor}")
    seen: dict[int, float] = {}

    def reaches(d: int) -> bool:
        if d not in seen:
            seen[d] = float(mean_metric(d))
        return seen[d] >= target

    d = min(max(int(d_start), d_min), d_max)
    lo: int | None
    hi: int | None
    if reaches(d):
        lo, hi = None, d
        while lo is None:
            if hi == d_min:
                lo = d_min - 1
                break
            down = max(d_min, min(hi - 1, int(math.floor(hi / factor))))
            if reaches(down):
                hi = down
            else:
                lo = down
    else:
        lo, hi = d, None
        while hi is None:
            if lo == d_max:
                return SearchOutcome(None, (lo, None), seen)
            up = min(d_max, max(lo + 1, int(math.ceil(lo * factor))))
            if reaches(up):
                hi = up
            else:
                lo = up
    while hi - lo > 1 and hi / max(lo, 1) > 1 + tolerance:
        mid = min(max(int(round(math.sqrt(max(lo, 1) * hi))), lo + 1), hi - 1)
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return SearchOutcome(hi, (lo, hi), seen)
