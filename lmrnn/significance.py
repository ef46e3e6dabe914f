"""What the seeds of a comparison can tell: per-cell means with 95% intervals, and which
differences between cells the seeds resolve.

Each cell's runs differ only in their seed (initial weights and dropout masks). For a figure x
over n seeds, the 95% interval of the mean is mean ± t(0.975, n - 1) sd / sqrt(n) (Student).
Two cells are compared on their test loss (nats per token, the log of the perplexity, on which
seed noise is closer to normal than on the perplexity itself) by Welch's interval for the
difference of means, with the Welch-Satterthwaite degrees of freedom. A difference is resolved
when that interval excludes zero; with one seed per cell nothing is.
"""

from __future__ import annotations

import itertools
import math
import statistics


def t_quantile(dof: float) -> float:
    """t(0.975, dof): the two-sided 95% point of Student's t."""
    from scipy.stats import t  # imported when a report is written, not with the CLI

    return float(t.ppf(0.975, dof))


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max, n, and the half-width of the
    95% interval of the mean (None for one value: no spread to go on)."""
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values), "n": n,
            "ci95": t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else None}


def difference(a: list[float], b: list[float]) -> dict:
    """mean(a) - mean(b) with its 95% Welch interval; `resolved` when the interval excludes 0."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"difference": diff, "low": None, "high": None, "resolved": False}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:  # no spread at all (counted n-gram models): any difference is exact
        return {"difference": diff, "low": diff, "high": diff, "resolved": diff != 0}
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(dof) * math.sqrt(va + vb)
    return {"difference": diff, "low": diff - half, "high": diff + half, "resolved": abs(diff) > half}


def pairwise(losses: dict[str, list[float]]) -> list[dict]:
    """Every pair of cells, the better (lower mean loss) first: its loss difference and interval."""
    rows = []
    for first, second in itertools.combinations(losses, 2):
        if statistics.fmean(losses[first]) > statistics.fmean(losses[second]):
            first, second = second, first
        rows.append({"better": first, "worse": second, **difference(losses[first], losses[second])})
    return rows
