"""The protocol that scores what a run holds (emotion_rl.evaluation), on made-up curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emotion_rl.evaluation import first_reached, held, iqm, last_third_mean, screen_passes


def curve(*returns: float, every: int = 1000) -> list[dict]:
    return [{"env_steps": every * (i + 1), "return_mean": r} for i, r in enumerate(returns)]


def test_the_score_is_the_mean_over_the_last_third_of_the_budget_not_the_best_moment():
    lucky = curve(100, 500, 200, 150, 120, 130)  # one peak at 2k, then lost
    steady = curve(100, 200, 300, 480, 490, 500)
    assert last_third_mean(lucky, 6000) == pytest.approx(400 / 3)  # evaluations at 4k, 5k, 6k: 150, 120, 130
    assert last_third_mean(steady, 6000) == pytest.approx(490.0)
    assert math.isnan(last_third_mean(curve(100), 6000))


def test_held_means_no_evaluation_fell_below_the_floor_after_the_first_at_the_threshold():
    assert first_reached(curve(100, 480, 410, 500), 475) == 2000
    assert held(curve(100, 480, 410, 500), 475, 400) is True
    assert held(curve(100, 480, 399, 500), 475, 400) is False
    assert held(curve(100, 200), 475, 400) is None


def test_iqm_trims_a_quarter_at_each_end_as_rliable_does():
    assert iqm([1, 2, 3, 4, 5]) == pytest.approx(3.0)
    assert iqm([3, 1, 10, 7, 2, 8]) == pytest.approx(5.0)
    rliable = pytest.importorskip("rliable.metrics")
    scores = np.random.default_rng(0).uniform(0, 500, size=9)
    assert iqm(scores) == pytest.approx(float(rliable.aggregate_iqm(scores.reshape(-1, 1))))


def test_the_screen_keeps_a_variant_whose_iqm_improves_and_whose_search_gains_on_enough_seeds():
    baseline = [300, 350, 400, 200, 250]
    better = [400, 450, 480, 300, 350]
    assert screen_passes(better, baseline, [5, 3, 1, 2, -1], min_positive=4)
    assert not screen_passes(better, baseline, [5, 3, -1, 0, -1], min_positive=4)
    assert not screen_passes(baseline, better, [5, 5, 5, 5, 5], min_positive=4)
