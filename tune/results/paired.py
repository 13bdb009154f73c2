"""Paired comparisons of two configs evaluated on the same points: is the better one better by
more than the noise?

Two configs' runs with the same seed are scored on the same points (the same held-out split,
which the seed fixes, or the test set), so each point says whether A and B disagree there.

- One seed: McNemar's exact test on the points where the two runs disagree; the difference's
  interval is the exact (Clopper-Pearson) interval of how the disagreeing points split, scaled to
  all points, so it excludes 0 exactly when p < 0.05. This tells the two *runs* apart; how much a
  config's result moves from seed to seed is not in it (on the project's tables, up to several
  points), so one seed cannot tell the *configs* apart, and the verdict says so.
- Several seeds, paired seed by seed: the interval is the wider of two, so each noise is counted:
  a Student-t interval over the per-seed differences (df = seeds - 1: the seed-to-seed noise,
  which a handful of seeds can only bound loosely) and a paired bootstrap over seeds and points
  (10,000 resamples, fixed seed, so the same runs always give the same interval; points that are
  the same for every seed, the test set, are resampled together). The configs are distinguishable
  when it excludes 0.

Each comparison is at 95% on its own: comparing a winner with several configs is not corrected
for their number.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Union

import numpy as np

from bilaw.eval.per_point import mcnemar_p

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
MCNEMAR = "McNemar exact"
SEEDS_AND_POINTS = "t over seeds and bootstrap over points"
MIN_SEEDS_TO_DROP = 3  # a race drops a config on no fewer seeds: two bound the seed-to-seed noise too loosely


@dataclass(frozen=True)
class Paired:
    """A minus B on the points both were scored on, as fractions (0.01 = one point in 100)."""

    difference: float
    low: float
    high: float
    points: int              # per seed (the same for every seed compared)
    seeds: tuple[int, ...]   # the seeds both configs have
    method: str              # MCNEMAR or SEEDS_AND_POINTS
    p_value: float | None = None  # McNemar only
    disagree: int | None = None   # McNemar only: the points where the two runs disagree

    @property
    def better(self) -> bool:
        """A is distinguishably better than B."""
        return self.low > 0

    @property
    def worse(self) -> bool:
        return self.high < 0

    @property
    def distinguishable(self) -> bool:
        return self.better or self.worse

    def describe(self) -> str:
        """e.g. "McNemar exact, p = 0.42, 150 points, seed 0"."""
        seeds = f"seed {self.seeds[0]}" if len(self.seeds) == 1 else f"{len(self.seeds)} seeds"
        p = f", p = {self.p_value:.3g}" if self.p_value is not None else ""
        return f"{self.method}{p}, {self.points} points, {seeds}"


Comparison = Union[Paired, str]  # a comparison, or why there is none


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
    if disagree == 0:
        return Paired(0.0, 0.0, 0.0, n, (), MCNEMAR, 1.0, 0)
    low, high = clopper_pearson(only_a, disagree)
    return Paired((only_a - only_b) / n, disagree * (2 * low - 1) / n, disagree * (2 * high - 1) / n, n, (),
                  MCNEMAR, mcnemar_p(only_a, only_b), disagree)


def _seed_differences(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """(seeds, points) int8: +1 where only A is right, -1 where only B is, else 0."""
    return np.stack([np.asarray(x, dtype=bool).astype(np.int8) - np.asarray(y, dtype=bool).astype(np.int8)
                     for x, y in zip(a, b)])


def bootstrap_interval(a: list[np.ndarray], b: list[np.ndarray], shared_points: bool = False,
                       resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The percentile interval of the mean over seeds of A's accuracy minus B's, resampling seeds
    and points. `shared_points`: every seed was scored on the same points (the test set), so a
    resample draws one set of points for all seeds; otherwise each seed's points are drawn on
    their own. Resampling n points is drawn as a multinomial count of the points of each kind
    (a kind: the point's +1/0/-1 for every seed, or for one seed), which is the same draw."""
    rng = np.random.default_rng(seed)
    d = _seed_differences(a, b)
    k, n = d.shape
    chosen = rng.integers(k, size=(resamples, k))
    if shared_points:
        kinds, counts = np.unique(d.T, axis=0, return_counts=True)   # (kinds, k)
        drawn = rng.multinomial(n, counts / n, size=resamples)       # (resamples, kinds)
        per_seed = drawn @ kinds.astype(np.int64) / n                # (resamples, k)
        means = np.take_along_axis(per_seed, chosen, axis=1)
    else:
        means = np.empty((resamples, k))
        for i in range(k):
            probs = [(d[i] == -1).mean(), (d[i] == 0).mean(), (d[i] == 1).mean()]
            slots = chosen == i
            drawn = rng.multinomial(n, probs, size=int(slots.sum()))
            means[slots] = (drawn[:, 2] - drawn[:, 0]) / n
    alpha = 1 - CONFIDENCE
    low, high = np.quantile(means.mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def seeds_interval(differences: list[float]) -> tuple[float, float]:
    """The Student-t interval (df = seeds - 1) of the mean of per-seed differences."""
    from scipy.stats import t

    mean = statistics.fmean(differences)
    sem = statistics.stdev(differences) / math.sqrt(len(differences))
    half = float(t.ppf(0.5 + CONFIDENCE / 2, len(differences) - 1)) * sem
    return mean - half, mean + half


def seeds_and_points(a: list[np.ndarray], b: list[np.ndarray], shared_points: bool = False) -> Paired:
    """Several seeds (a[i], b[i]: the same seed's runs): the mean over seeds of A minus B, and the
    wider of the t-interval over seeds and the bootstrap interval over seeds and points."""
    d = _seed_differences(a, b)
    per_seed = [float(row.mean()) for row in d]
    t_low, t_high = seeds_interval(per_seed)
    b_low, b_high = bootstrap_interval(a, b, shared_points)
    return Paired(statistics.fmean(per_seed), min(t_low, b_low), max(t_high, b_high), d.shape[1], (),
                  SEEDS_AND_POINTS)


def compare(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray], shared_points: bool = False) -> Comparison:
    """A against B (seed -> bool per point for each), paired on the seeds both have: McNemar with
    one such seed, `seeds_and_points` with several. Where they cannot be compared, why (a str)."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return "no seed in common: not compared"
    sizes = {(len(a[s]), len(b[s])) for s in seeds}
    if any(x != y for x, y in sizes) or len(sizes) > 1:
        return f"scored on different numbers of points {sorted(sizes)}: not compared"
    if len(seeds) == 1:
        result = mcnemar_difference(a[seeds[0]], b[seeds[0]])
    else:
        result = seeds_and_points([a[s] for s in seeds], [b[s] for s in seeds], shared_points)
    return Paired(result.difference, result.low, result.high, result.points, seeds, result.method, result.p_value,
                  result.disagree)


def mean_accuracy(points: Mapping[int, np.ndarray]) -> float:
    """The mean over seeds of a config's accuracy on its points."""
    return float(np.mean([np.asarray(v, dtype=bool).mean() for v in points.values()])) if points else math.nan


def against_leader(groups: Mapping[str, Mapping[int, np.ndarray]], leader: str,
                   shared_points: bool = False) -> dict[str, Comparison]:
    """The leader against every other config (label -> seed -> bool per point)."""
    return {label: compare(groups[leader], points, shared_points) for label, points in groups.items()
            if label != leader}


def verdict(leader: str, comparisons: Mapping[str, Comparison]) -> str:
    """One line: which configs the leader is distinguishably better than at 95%, which it cannot
    be told from, and which did better than it on the seeds both have."""
    compared = {k: v for k, v in comparisons.items() if isinstance(v, Paired)}
    if not compared:
        return f"{leader}: no other config shares a seed and points with it; nothing to compare"
    close = [label for label, p in compared.items() if not p.distinguishable]
    ahead = [label for label, p in compared.items() if p.worse]
    parts = []
    if not close and not ahead:
        parts.append(f"{leader} is distinguishably better than every other config compared ({len(compared)}) at 95%")
    elif close:
        parts.append(f"{leader} is not distinguishable from {', '.join(close)} at 95%")
    else:
        behind = [label for label, p in compared.items() if p.better]
        parts.append(f"{leader} is distinguishably better than {', '.join(behind) or 'no other config'} at 95%")
    if ahead:
        parts.append(f"{', '.join(ahead)} did distinguishably better than it on the seeds both have")
    line = "; ".join(parts)
    if any(len(p.seeds) == 1 and p.distinguishable for p in compared.values()):
        line += (" (a difference on one seed tells those two runs apart, not the configs: how much a config moves "
                 "from seed to seed is not in it)")
    return line


def winner_standing(comparisons: Mapping[str, Comparison]) -> str:
    """For a tag: "true" (better than every other config, on several seeds each), "runs only"
    (better than every other, but some only on one seed), "false", or "not compared"."""
    compared = [p for p in comparisons.values() if isinstance(p, Paired)]
    if not compared:
        return "not compared"
    if not all(p.better for p in compared):
        return "false"
    return "runs only" if any(len(p.seeds) == 1 for p in compared) else "true"


def format_comparisons(comparisons: Mapping[str, Comparison], indent: str = "  ") -> list[str]:
    """One line per other config: difference and 95% interval in accuracy points, and how."""
    width = max((len(label) for label in comparisons), default=0)
    lines = []
    for label, p in comparisons.items():
        if not isinstance(p, Paired):
            lines.append(f"{indent}{label:<{width}}  {p}")
        elif p.disagree == 0:
            lines.append(f"{indent}{label:<{width}}  +0.00 points: right and wrong on exactly the same points  "
                         f"not distinguishable  ({p.describe()})")
        else:
            mark = "distinguishable" if p.distinguishable else "not distinguishable"
            lines.append(f"{indent}{label:<{width}}  {100 * p.difference:+6.2f} points [{100 * p.low:+.2f}, "
                         f"{100 * p.high:+.2f}]  {mark}  ({p.describe()})")
    return lines
