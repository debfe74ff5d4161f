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


# ---------------------------------------------------------------------------------------------- playing, the callback
def tiny_cli(tmp_path, *overrides: str):
    from emotion_rl.cli import main

    from conftest import CONFIG, TINY

    args = ["--config", CONFIG, *TINY, "--seed_everything", "0", "--trainer.max_steps", "-1"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_checkpointing", "false"]
    args += ["--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false", *overrides]
    return main(args, run=False)


def test_evaluate_plays_the_same_start_states_for_every_planner_and_decision(tmp_path):
    import torch

    from emotion_rl import FixedEmotionPlanner
    from emotion_rl.evaluation import datamodule_settings, evaluate, measure_gain

    cli = tiny_cli(tmp_path)
    settings = datamodule_settings(cli.datamodule)
    assert settings["env_id"] == "CartPole-v1" and settings["time_limit"] == 40
    first = evaluate(cli.model, settings, 3, seed=5)
    again = evaluate(cli.model, settings, 3, seed=5)
    assert first["episode_return"].shape == (3,) and torch.equal(first["episode_return"], again["episode_return"])
    assert (
        bool((first["episode_length"] <= 40).all()) and first["episode_return"].sum() == first["episode_length"].sum()
    )
    fixed = evaluate(cli.model, settings, 3, seed=5, planner=FixedEmotionPlanner(2), decision="emotion")
    report = measure_gain(cli.model, settings, 3, seed=5, rows=("emotion_2",), log=lambda *_: None)
    assert report["rows"]["search"]["returns"] == first["episode_return"].tolist()  # the search row is evaluate's
    assert report["rows"]["emotion_2"]["returns"] == fixed["episode_return"].tolist()  # the row acts by "emotion"
    cli.datamodule.shutdown()


def test_the_callback_evaluates_every_n_env_steps_keeps_the_best_stops_at_the_threshold_and_writes_the_curve(
    tmp_path,
):
    import json

    from emotion_rl.evaluation import EvalCallback

    with pytest.raises(ValueError, match="stop_at_threshold needs a threshold"):
        EvalCallback(16, stop_at_threshold=True)
    cli = tiny_cli(tmp_path)
    best, written = tmp_path / "best.ckpt", tmp_path / "curve.json"
    callback = EvalCallback(32, budget=96, threshold=-1.0, floor=-2.0, best_path=best, curve_path=written)
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    steps = [point["env_steps"] for point in callback.curve]
    data = cli.datamodule  # an evaluation every 32 env steps: every 32 * updates / frames training batches
    assert cli.trainer.val_check_interval == round(32 * data.updates_per_collection / data.frames_per_batch)
    assert len(steps) >= 2 and steps == sorted(set(steps))
    assert cli.datamodule.env_steps >= 96 and cli.datamodule.env_steps - 96 < 32  # stopped at the budget
    assert all(any(key.startswith("end_") for key in point) for point in callback.curve)  # why episodes ended
    assert best.is_file() and callback.best_return == max(p["return_mean"] for p in callback.curve)
    score = callback.score()
    assert score["score"] == last_third_mean(callback.curve, 96) and score["reached_env_steps"] == steps[0]
    assert score["held"] is True  # every return is above the floor of -2
    assert json.loads(written.read_text()) == json.loads(json.dumps({"curve": callback.curve, **score}))
    stopper = tiny_cli(tmp_path / "stop")
    early = EvalCallback(32, budget=10_000, threshold=-1.0, stop_at_threshold=True)
    stopper.trainer.callbacks.append(early)
    stopper.trainer.fit(stopper.model, datamodule=stopper.datamodule)
    assert len(early.curve) == 1 and stopper.datamodule.env_steps < 10_000  # stopped at its first evaluation
