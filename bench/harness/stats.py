"""Paired statistics over per-item outcomes: the bootstrap, verdicts, the chance test, regression bounds.

Items are documents (accuracy: 1 correct / 0 wrong) or perplexity windows (mean NLL per token, weighted by the
window's token count). Two runs evaluated on the same items are compared item by item (paired).

``bootstrap(x, y, strata, weights, ...)`` is the one resampling routine. Two levels:

- items: each replicate resamples items with replacement within each stratum (task), the same item indices for
  ``x`` and ``y`` (paired), on the seed means of each item (``xbar - ybar``). With ``block=L`` the items of a
  stratum are resampled in circular blocks of ``L`` consecutive items (the circular block bootstrap, Politis and
  Romano 1992) so that serial dependence (perplexity windows of one text) is kept; ``block="auto"`` picks ``L`` by
  the Politis-White (2004) rule with the Patton-Politis-White (2009) correction (``block_length``), at least
  ``ceil(n^(1/3))``.
- seeds: an explicit seed-level variance component, not a resampling of the few seeds (3 seeds give only 10
  distinct multisets). Each replicate adds ``seed_sd * T`` with ``T`` a Student-t draw on ``seed_df`` degrees of
  freedom (normal when ``seed_df`` is None). ``seed_sd`` is given by the caller (the report's pooled seed model,
  ``bench.harness.reporting.pairing.SeedModel``) or, when None, estimated from the rows of ``x`` and ``y``: the
  sample variance over seeds of each side's per-seed statistic divided by its seed count, summed (sides with one
  seed add nothing), ``seed_df`` by Welch-Satterthwaite.

The statistic is the mean over strata of the weighted item mean of ``xbar - ybar``. For accuracy the strata are
tasks and the weights 1: the mean over tasks of per-task accuracy differences. For perplexity there is one stratum
and the weights are token counts: the difference of mean NLL per token, i.e. the log of the perplexity ratio. The
interval is the percentile interval of the replicates; ``Interval.p`` the two-sided bootstrap p-value of 0
(``2 * min(P*(rep <= 0), P*(rep >= 0))``, with the ``+1`` correction), the input of ``holm``.

``verdict(interval)``: ``ahead`` when the interval lies above 0, ``behind`` when below, else ``not resolved``.

``holm(p, alpha)``: Holm's step-down familywise correction; returns the adjusted p-values (reject where
``<= alpha``).

``at_chance(k, n, chance)``: a task sits at chance when an exact one-sided binomial test cannot reject
``accuracy <= chance`` at ``alpha`` (default 0.05): ``P(X >= k | n, chance) >= alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    p: float | None = None          # two-sided bootstrap p-value of 0
    block: int = 1                  # item block length (1: items resampled independently)
    seed_sd: float = 0.0            # s.d. of the seed-level component added to every replicate
    seed_df: float | None = None    # its degrees of freedom (None: normal)
    reps: np.ndarray | None = field(default=None, repr=False, compare=False)

    def scaled(self, factor: float) -> Interval:
        return Interval(self.estimate * factor, self.lo * factor, self.hi * factor, self.level, self.n_boot,
                        self.n_items, self.n_seeds, self.p, self.block, self.seed_sd * abs(factor), self.seed_df,
                        None if self.reps is None else self.reps * factor)

    def at(self, level: float) -> Interval:
        """The same replicates' percentile interval at another ``level`` (e.g. a Bonferroni level)."""
        if self.reps is None:
            raise ValueError("at: this interval kept no replicates")
        a = (1 - level) / 2
        lo, hi = np.quantile(self.reps, [a, 1 - a])
        return Interval(self.estimate, float(lo), float(hi), level, self.n_boot, self.n_items, self.n_seeds, self.p,
                        self.block, self.seed_sd, self.seed_df, self.reps)


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (items,) or (seeds, items) with at least one item, got {a.shape}")
    return a


def block_length(d, max_block: int | None = None) -> int:
    """Block length for the circular block bootstrap of the mean of the series ``d``: the Politis-White (2004) rule
    with the Patton-Politis-White (2009) correction, ``b = (2 G^2 / D_CB * n)^(1/3)``, ``G = sum_k lambda(k/M) |k|
    R(k)``, ``D_CB = 4/3 g^2``, ``g = sum_k lambda(k/M) R(k)`` (flat-top window ``lambda``; ``M = 2 m``, ``m`` the
    first lag after which ``K_n = max(5, sqrt(log10 n))`` autocorrelations stay within ``2 sqrt(log10 n / n)``).
    Rounded up, at least 1, at most ``max_block`` (default ``ceil(min(3 sqrt(n), n / 3))``)."""
    d = np.asarray(d, dtype=float)
    n = d.size
    if n < 4:
        return 1
    cap = max_block or int(math.ceil(min(3 * math.sqrt(n), n / 3)))
    x = d - d.mean()
    var = float(x @ x) / n
    if var == 0:
        return 1
    kn = max(5, int(math.ceil(math.sqrt(math.log10(n)))))
    max_lag = min(int(math.ceil(math.sqrt(n))) + kn, n - 1)
    acov = np.array([float(x[: n - k] @ x[k:]) / n for k in range(max_lag + 1)])
    rho = acov / var
    thr = 2 * math.sqrt(math.log10(n) / n)
    m = max_lag - kn  # no cut-off found: the largest lag considered
    for lag in range(1, max_lag - kn + 1):
        if np.all(np.abs(rho[lag: lag + kn]) < thr):
            m = lag - 1
            break
    big_m = min(2 * max(m, 1), max_lag)
    k = np.arange(-big_m, big_m + 1)
    t = np.abs(k) / big_m
    lam = np.where(t <= 0.5, 1.0, np.where(t <= 1.0, 2 * (1 - t), 0.0))
    r = acov[np.abs(k)]
    g_big = float((lam * np.abs(k) * r).sum())
    g0 = float((lam * r).sum())
    if g0 <= 0 or g_big == 0:
        return 1
    b = (2 * g_big ** 2 / (4 / 3 * g0 ** 2) * n) ** (1 / 3)
    return int(min(max(1, math.ceil(b)), cap))


def _circular_blocks(rng: np.random.Generator, n: int, block: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) indices of the circular block bootstrap: ceil(n / block) blocks of ``block`` consecutive indices
    (mod n) from uniform starts, concatenated and cut to n."""
    nb = -(-n // block)
    starts = rng.integers(0, n, size=(n_boot, nb))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return idx.reshape(n_boot, nb * block)[:, :n]


def seed_component(x, y=None, stat=None) -> tuple[float, float | None]:
    """``(sd, df)`` of the seed-level component of ``stat(xbar) - stat(ybar)`` estimated from the rows (seeds) of
    ``x`` and ``y``: ``var = s2_x / k_x + s2_y / k_y`` (``s2``: sample variance over seeds of the per-seed statistic;
    a side with one seed adds 0), ``df`` by Welch-Satterthwaite (None when no side has two seeds)."""
    stat = stat or (lambda v: float(np.mean(v)))
    parts = []
    for a in (x, y):
        if a is None or a.shape[0] < 2:
            continue
        s = np.array([stat(row) for row in a])
        parts.append((float(s.var(ddof=1)) / a.shape[0], a.shape[0] - 1))
    if not parts:
        return 0.0, None
    var = sum(v for v, _ in parts)
    if var == 0:
        return 0.0, None
    df = var ** 2 / sum(v ** 2 / k for v, k in parts)
    return math.sqrt(var), df


def bootstrap(x, y=None, strata=None, weights=None, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0, block: int | str | None = None, seed_sd: float | None = None,
              seed_df: float | None = None) -> Interval:
    """Paired, stratified (optionally block) bootstrap of ``stat(x) - stat(y)`` (or of ``stat(x)`` when ``y`` is
    None), plus a seed-level variance component.

    Args:
        x: per-item values, shape (items,) or (seeds, items).
        y: the other run's values on the same items (same item order), shape (items,) or (seeds, items); or None.
        strata: per-item stratum labels (e.g. the task), shape (items,); None = one stratum.
        weights: per-item weights (e.g. a window's token count), shape (items,); None = 1.
        n_boot: bootstrap replicates.
        level: two-sided coverage of the percentile interval.
        seed: seed of the resampling (results are reproducible).
        block: None or 1: items resampled independently; an int ``L``: circular blocks of ``L`` items within each
            stratum (items in their serial order); ``"auto"``: ``L = max(block_length, ceil(n^(1/3)))`` of the
            per-item differences (the longest over strata; the floor because the Politis-White correlogram cut-off
            is noisy on ~100 items and can return 1 for a series with real lag-1 correlation).
        seed_sd, seed_df: the seed-level component (s.d. of the statistic's seed noise, t degrees of freedom);
            None: estimated from the seeds of ``x`` and ``y`` (``seed_component``).
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
    if seed_sd is not None and not seed_sd >= 0:
        raise ValueError(f"seed_sd: expected a standard deviation >= 0, got {seed_sd!r}")
    if seed_df is not None and not seed_df > 0:
        raise ValueError(f"seed_df: expected degrees of freedom > 0, got {seed_df!r}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]

    def stat(d: np.ndarray, idx_of) -> np.ndarray:  # d: (B, n) per-item differences; returns (B,)
        out = np.zeros(d.shape[0])
        for g in groups:
            idx = idx_of(g)  # (B, n_g) item indices
            wi = w[idx]
            out += (np.take_along_axis(d, idx, axis=1) * wi).sum(axis=1) / wi.sum(axis=1)
        return out / len(groups)

    def stat1(v: np.ndarray) -> float:
        return float(stat(v[None, :], lambda g: g[None, :])[0])

    d0 = x.mean(axis=0) - (0 if y is None else y.mean(axis=0))
    estimate = stat1(d0)
    if block == "auto":  # Politis-White, floored at ceil(n^(1/3)): PW's correlogram cut-off is noisy on few items
        blk = max(max(block_length(d0[g]), math.ceil(len(g) ** (1 / 3) - 1e-9)) for g in groups)
    elif block is None:
        blk = 1
    elif isinstance(block, (int, np.integer)) and not isinstance(block, bool) and block >= 1:
        blk = int(block)
    else:
        raise ValueError(f"block: expected None, 'auto' or an integer >= 1, got {block!r}")

    def draw(g: np.ndarray) -> np.ndarray:
        if blk == 1 or len(g) < 2:
            return g[rng.integers(0, len(g), size=(n_boot, len(g)))]
        return g[_circular_blocks(rng, len(g), min(blk, len(g)), n_boot)]

    reps = stat(np.broadcast_to(d0, (n_boot, n)), draw)
    if seed_sd is None:
        seed_sd, seed_df = seed_component(x, y, stat1)
    if seed_sd > 0:
        t = rng.standard_normal(n_boot) if seed_df is None else rng.standard_t(seed_df, n_boot)
        reps = reps + seed_sd * t
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    p = min(1.0, 2 * min((1 + (reps <= 0).sum()) / (n_boot + 1), (1 + (reps >= 0).sum()) / (n_boot + 1)))
    return Interval(estimate, float(lo), float(hi), level, n_boot, n, (x.shape[0], 0 if y is None else y.shape[0]),
                    float(p), blk, float(seed_sd), seed_df, reps)


def holm(p, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down adjusted p-values of the family ``p`` (reject hypothesis ``i`` at familywise level ``alpha``
    where ``adjusted[i] <= alpha``): sort ascending, ``adj_(j) = max_{i <= j} min(1, (m - i + 1) p_(i))``."""
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p: expected a 1-d array of p-values in [0, 1], got {p!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.maximum.accumulate(adj)
    out = np.empty(m)
    out[order] = adj
    return out


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
