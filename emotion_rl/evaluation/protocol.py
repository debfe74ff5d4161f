"""Scoring a training run by what it holds (docs/benchmarks.md, "The protocol"), not by its best moment.

A run trains its whole budget of env steps and is evaluated greedily every so many env steps on the same start
states; a curve is the list of those evaluations, each ``{"env_steps": int, "return_mean": float, ...}``. Its score
is the mean over the evaluations in the last third of the budget; a run that reached the threshold "held" it if no
later evaluation fell below the floor. A screen keeps an option when its interquartile mean of scores over seeds beats
the baseline's and its search gain is positive on enough seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["first_reached", "held", "iqm", "last_third_mean", "screen_passes"]

Curve = Sequence[Mapping[str, float]]


def last_third_mean(curve: Curve, budget: int, key: str = "return_mean") -> float:
    """The mean of ``key`` over the evaluations at or after two thirds of ``budget`` env steps (NaN if none)."""
    tail = [point[key] for point in curve if point["env_steps"] >= 2 * budget / 3]
    return float(np.mean(tail)) if tail else math.nan


def first_reached(curve: Curve, threshold: float, key: str = "return_mean") -> int | None:
    """The env steps of the first evaluation at or above ``threshold``, None if none reached it."""
    return next((int(point["env_steps"]) for point in curve if point[key] >= threshold), None)


def held(curve: Curve, threshold: float, floor: float, key: str = "return_mean") -> bool | None:
    """Whether no evaluation after the first one at ``threshold`` fell below ``floor``; None if none reached it."""
    reached = first_reached(curve, threshold, key)
    if reached is None:
        return None
    return all(point[key] >= floor for point in curve if point["env_steps"] > reached)


def iqm(scores: Sequence[float]) -> float:
    """The interquartile mean of per-seed scores: the mean of the middle half (25% trimmed at each end), as rliable
    computes it over runs."""
    values = np.sort(np.asarray(scores, dtype=float))
    if values.size == 0:
        return math.nan
    cut = int(np.floor(0.25 * values.size))
    middle = values[cut : values.size - cut] if values.size > 2 else values
    return float(middle.mean())


def screen_passes(
    variant_scores: Sequence[float], baseline_scores: Sequence[float], gains: Sequence[float], min_positive: int
) -> bool:
    """The screening rule: the variant's :func:`iqm` of scores beats the baseline's, and its search gain (search
    minus the best alternative the search-gain measurement plays) is positive on at least ``min_positive`` seeds."""
    return iqm(variant_scores) > iqm(baseline_scores) and sum(gain > 0 for gain in gains) >= min_positive
