"""Paired statistics over per-item outcomes: the bootstrap, verdicts, the chance test, regression bounds.

Items are documents (accuracy: 1 correct / 0 wrong) or perplexity windows (mean NLL per token, weighted by the
window's token count). Two runs evaluated on the same items are compared item by item (paired).

``bootstrap(x, y, strata, weights, ...)`` is the one resampling routine. Each replicate first resamples seeds
(rows of ``x`` and of ``y``, independently, with replacement; a no-op with one seed), then resamples items with
replacement within each stratum (task), the same item indices for ``x`` and ``y`` (paired). The statistic is the
mean over strata of the weighted item mean of ``xbar - ybar`` (``xbar``: the item's mean over the resampled seeds).
For accuracy the strata are tasks and the weights 1: the mean over tasks of per-task accuracy differences. For
perplexity there is one stratum and the weights are token counts: the difference of mean NLL per token, i.e. the
log of the perplexity ratio. The interval is the percentile interval of the replicates.

``verdict(interval)``: ``ahead`` when the interval lies above 0, ``behind`` when below, else ``not resolved``.

``at_chance(k, n, chance)``: a task sits at chance when an exact one-sided binomial test cannot reject
``accuracy <= chance`` at ``alpha`` (default 0.05): ``P(X >= k | n, chance) >= alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

AHEAD, BEHIND, UNRESOLVED = "ahead", "behind", "not resolved"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval."""

    estimate: float
    lo: float
    hi: float
    level: float
    n_boot: int
    n_items: int
    n_seeds: tuple[int, int]

    def scaled(self, factor: float) -> Interval:
        return Interval(self.estimate * factor, self.lo * factor, self.hi * factor, self.level, self.n_boot,
                        self.n_items, self.n_seeds)


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (items,) or (seeds, items) with at least one item, got {a.shape}")
    return a


def _seed_weights(rng: np.random.Generator, n_seeds: int, n_boot: int) -> np.ndarray:
    """(n_boot, n_seeds) resampling weights (multinomial counts / n_seeds); all-equal with one seed."""
    if n_seeds == 1:
        return np.ones((n_boot, 1))
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot) / n_seeds


def bootstrap(x, y=None, strata=None, weights=None, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> Interval:
    """Hierarchical, stratified, paired bootstrap of ``stat(x) - stat(y)`` (or of ``stat(x)`` when ``y`` is None).

    Args:
        x: per-item values, shape (items,) or (seeds, items).
        y: the other run's values on the same items (same item order), shape (items,) or (seeds, items); or None.
        strata: per-item stratum labels (e.g. the task), shape (items,); None = one stratum.
        weights: per-item weights (e.g. a window's token count), shape (items,); None = 1.
        n_boot: bootstrap replicates.
        level: two-sided coverage of the percentile interval.
        seed: seed of the resampling (results are reproducible).
    Returns:
        ``Interval(estimate, lo, hi, ...)``; ``stat`` is the mean over strata of the weighted item mean (over the
        seeds' mean per item).
    """
    x = _as_2d(x, "x")
    n = x.shape[1]
    y = None if y is None else _as_2d(y, "y")
    if y is not None and y.shape[1] != n:
        raise ValueError(f"y: {y.shape[1]} items, but x has {n}; a paired comparison needs the same items")
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if strata.shape != (n,):
        raise ValueError(f"strata: expected {n} labels, got shape {strata.shape}")
    if w.shape != (n,) or (w <= 0).any():
        raise ValueError(f"weights: expected {n} positive weights, got shape {w.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a fraction in (0, 1), got {level!r}")
    if not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"n_boot: expected an integer >= 10, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]

    def stat(d: np.ndarray, idx_of) -> np.ndarray:  # d: (B, n) per-item differences; returns (B,)
        out = np.zeros(d.shape[0])
        for g in groups:
            idx = idx_of(g)  # (B, n_g) item indices
            wi = w[idx]
            out += (np.take_along_axis(d, idx, axis=1) * wi).sum(axis=1) / wi.sum(axis=1)
        return out / len(groups)

    d0 = x.mean(axis=0) - (0 if y is None else y.mean(axis=0))
    estimate = float(stat(d0[None, :], lambda g: g[None, :])[0])
    d = _seed_weights(rng, x.shape[0], n_boot) @ x
    if y is not None:
        d = d - _seed_weights(rng, y.shape[0], n_boot) @ y
    reps = stat(d, lambda g: g[rng.integers(0, len(g), size=(n_boot, len(g)))])
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return Interval(estimate, float(lo), float(hi), level, n_boot, n, (x.shape[0], 0 if y is None else y.shape[0]))


def verdict(iv: Interval | None, higher_is_better: bool = True) -> str:
    """``ahead`` / ``behind`` when the interval excludes 0 (in the better / worse direction), else ``not resolved``."""
    if iv is None:
        return "–"
    if iv.lo > 0:
        return AHEAD if higher_is_better else BEHIND
    if iv.hi < 0:
        return BEHIND if higher_is_better else AHEAD
    return UNRESOLVED


def binom_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)`` (exact)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def at_chance(k: int, n: int, chance: float, alpha: float = 0.05) -> bool:
    """True when ``k`` correct of ``n`` is not significantly above ``chance`` (one-sided exact binomial test)."""
    return binom_sf(k, n, chance) >= alpha


def z_two_sided(alpha: float) -> float:
    """The normal quantile ``z`` with ``P(|Z| > z) = alpha``."""
    return NormalDist().inv_cdf(1 - alpha / 2)


def acc_diff_bound(acc: float, n: int, alpha: float) -> float:
    """Bound on ``|acc_current - acc_reference|`` for two independent ``n``-document accuracy estimates of the same
    quality, exceeded with probability ``alpha`` (normal approximation; ``acc`` shrunk to ``(k + 1) / (n + 2)`` so a
    0 or 1 reference still gets a non-zero bound)."""
    p = (acc * n + 1) / (n + 2)
    return z_two_sided(alpha) * math.sqrt(2 * p * (1 - p) / n)


def log_ppl_bound(window_nll, window_tokens, alpha: float) -> float:
    """Bound on ``|log ppl_current - log ppl_reference|`` from the per-window NLLs of one run: the per-token mean
    NLL's standard error over windows (``sd of per-window mean NLL / sqrt(windows)``, token-weighted), times
    ``sqrt(2)`` (two independent estimates) and the two-sided normal quantile of ``alpha``."""
    nll = np.asarray(window_nll, dtype=float)
    tok = np.asarray(window_tokens, dtype=float)
    if nll.size < 2:
        raise ValueError(f"window_nll: need at least 2 windows for a variance, got {nll.size}")
    m = nll / tok
    mean = nll.sum() / tok.sum()
    w = tok / tok.sum()
    se = math.sqrt(float((w ** 2 * (m - mean) ** 2).sum()) * nll.size / (nll.size - 1))
    return z_two_sided(alpha) * math.sqrt(2) * se
