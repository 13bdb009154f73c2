"""Paired comparisons of two configs evaluated on the same points: is the better one better by
more than the noise?

Two configs' runs with the same seed are scored on the same points (the same held-out or test
set), so each point says whether A and B disagree there. With one seed the test is McNemar's
exact test on the points where they disagree, and the difference's interval is the exact
(Clopper-Pearson) interval of how the disagreeing points split, scaled to all points: it excludes
0 exactly when the test's p is below 0.05. With several seeds the runs are paired seed by seed and
the interval is a paired bootstrap over seeds and, within each seed, over points (fixed seed, so
the same inputs always give the same interval); the configs are distinguishable when it excludes 0.
Each comparison is at 95% on its own: several comparisons against one winner are not corrected
for their number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from bilaw.per_point import mcnemar_p

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Paired:
    """A minus B on the points both were scored on, as fractions (0.01 = one point in 100)."""

    difference: float
    low: float
    high: float
    points: int              # per seed (the same for every seed compared)
    seeds: tuple[int, ...]   # the seeds both configs have
    method: str              # "McNemar exact" or "paired bootstrap"
    p_value: float | None = None  # McNemar only

    @property
    def distinguishable(self) -> bool:
        if self.p_value is not None:
            return self.p_value < 1 - CONFIDENCE
        return self.low > 0 or self.high < 0

    def describe(self) -> str:
        """e.g. "McNemar exact, p = 0.42, 150 points, seed 0"."""
        seeds = f"seed {self.seeds[0]}" if len(self.seeds) == 1 else f"{len(self.seeds)} seeds"
        p = f", p = {self.p_value:.3g}" if self.p_value is not None else ""
        return f"{self.method}{p}, {self.points} points, {seeds}"


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion k / n."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson: need 0 <= k <= n and n > 0, got {k}/{n}")
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def mcnemar_difference(a: np.ndarray, b: np.ndarray) -> Paired:
    """One seed: A's accuracy minus B's on the same points (bool arrays), McNemar's exact p and
    the interval of the difference given how many points the two disagree on."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    disagree = only_a + only_b
    difference = (only_a - only_b) / n
    if disagree == 0:
        return Paired(0.0, 0.0, 0.0, n, (), "McNemar exact", 1.0)
    low, high = clopper_pearson(only_a, disagree)
    return Paired(difference, disagree * (2 * low - 1) / n, disagree * (2 * high - 1) / n, n, (), "McNemar exact",
                  mcnemar_p(only_a, only_b))


def bootstrap_difference(a: list[np.ndarray], b: list[np.ndarray], resamples: int = RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> Paired:
    """Several seeds (a[i] and b[i]: the same seed's runs, bool per point): the mean over seeds of
    A's accuracy minus B's, and its percentile interval from resampling seeds and, within each
    resampled seed, its points. Resampling a seed's n points is drawn as a multinomial count of
    the points where only A, only B, or both or neither are right, which is the same draw."""
    rng = np.random.default_rng(seed)
    diffs = [np.asarray(x, dtype=bool).astype(np.int8) - np.asarray(y, dtype=bool).astype(np.int8)
             for x, y in zip(a, b)]
    k = len(diffs)
    chosen = rng.integers(k, size=(resamples, k))
    means = np.empty((resamples, k))
    for i, d in enumerate(diffs):
        n = len(d)
        probs = [(d == -1).mean(), (d == 0).mean(), (d == 1).mean()]
        slots = chosen == i
        counts = rng.multinomial(n, probs, size=int(slots.sum()))
        means[slots] = (counts[:, 2] - counts[:, 0]) / n
    alpha = 1 - CONFIDENCE
    low, high = np.quantile(means.mean(axis=1), [alpha / 2, 1 - alpha / 2])
    difference = float(np.mean([d.mean() for d in diffs]))
    return Paired(difference, float(low), float(high), len(diffs[0]), (), "paired bootstrap")


def compare(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> Paired | None:
    """A against B (seed -> bool per point for each), paired on the seeds both have: McNemar with
    one such seed, the bootstrap with several; None when they share no seed."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    for s in seeds:
        if len(a[s]) != len(b[s]):
            raise ValueError(f"seed {s}: the two configs were scored on different points ({len(a[s])} and "
                             f"{len(b[s])}); a paired comparison needs the same points")
    sizes = {len(a[s]) for s in seeds}
    if len(sizes) > 1:
        raise ValueError(f"the seeds were scored on different numbers of points ({sorted(sizes)})")
    if len(seeds) == 1:
        result = mcnemar_difference(a[seeds[0]], b[seeds[0]])
    else:
        result = bootstrap_difference([a[s] for s in seeds], [b[s] for s in seeds])
    return Paired(result.difference, result.low, result.high, result.points, seeds, result.method, result.p_value)


def mean_accuracy(points: Mapping[int, np.ndarray]) -> float:
    """The mean over seeds of a config's accuracy on its points."""
    return float(np.mean([np.asarray(v, dtype=bool).mean() for v in points.values()])) if points else math.nan


def against_leader(groups: Mapping[str, Mapping[int, np.ndarray]], leader: str) -> dict[str, Paired | None]:
    """The leader against every other config (label -> seed -> bool per point)."""
    return {label: compare(groups[leader], points) for label, points in groups.items() if label != leader}


def verdict(leader: str, comparisons: Mapping[str, Paired | None]) -> str:
    """One line: is the leader distinguishable from each other config at 95%?"""
    compared = {k: v for k, v in comparisons.items() if v is not None}
    if not compared:
        return f"{leader}: no other config shares a seed and points with it; nothing to compare"
    close = [label for label, p in compared.items() if not p.distinguishable]
    if not close:
        return f"{leader} is distinguishable from every other config compared ({len(compared)}) at 95%"
    return f"{leader} is not distinguishable from {', '.join(close)} at 95%"


def format_comparisons(comparisons: Mapping[str, Paired | None], indent: str = "  ") -> list[str]:
    """One line per other config: difference and 95% interval in accuracy points, and how."""
    width = max((len(label) for label in comparisons), default=0)
    lines = []
    for label, p in comparisons.items():
        if p is None:
            lines.append(f"{indent}{label:<{width}}  no shared seed: not compared")
            continue
        mark = "distinguishable" if p.distinguishable else "not distinguishable"
        lines.append(f"{indent}{label:<{width}}  {100 * p.difference:+6.2f} points [{100 * p.low:+.2f}, "
                     f"{100 * p.high:+.2f}]  {mark}  ({p.describe()})")
    return lines
