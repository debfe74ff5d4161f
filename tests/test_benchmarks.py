"""The reporting logic of benchmarks/learning.py and benchmarks/plot_learning.py on made-up runs, and the speed
benchmark's modules and inputs.

The benchmarks themselves (training runs of minutes) never run in the test suite.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from argparse import Namespace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


learning = load("learning")
plot_learning = load("plot_learning")
ARGS = Namespace(config="c.yaml", threshold=475.0, budget=3000, eval_episodes=20)


def point(steps: int, value: float) -> dict:
    return {"env_steps": steps, "wall_s": steps / 100, "wall_with_evals_s": steps / 50, "return_mean": value}


def test_a_run_reaches_the_threshold_at_its_first_evaluation_at_or_above_it_and_solves_by_its_final_mean():
    curve = [point(1000, 200.0), point(2000, 475.0), point(3000, 300.0)]
    result = learning.summarize("emotion", 3, curve, 3000, 30.0, [480.0, 470.0, 490.0], ARGS)
    assert (result["reached_env_steps"], result["reached_wall_s"]) == (2000, 20.0)
    assert result["final_return_mean"] == pytest.approx(480.0) and result["final_return_min"] == 470.0
    assert result["solved"]
    unsolved = learning.summarize("emotion", 4, curve[:1], 1000, 10.0, [474.0], ARGS)
    assert unsolved["reached_env_steps"] is None and not unsolved["solved"]


def test_curves_hold_after_a_solved_run_and_end_where_an_unsolved_run_stopped():
    solved = learning.summarize("ppo", 0, [point(1000, 100.0), point(2000, 480.0)], 2000, 5.0, [500.0], ARGS)
    stopped = learning.summarize("ppo", 1, [point(1000, 50.0), point(2000, 90.0)], 2000, 5.0, [90.0], ARGS)
    grid = [500, 1000, 1500, 2500, 3000]
    assert plot_learning.curve_at(solved, grid)[1:] == [100.0, 100.0, 480.0, 480.0]
    values = plot_learning.curve_at(stopped, grid)
    assert math.isnan(values[0]) and values[1:3] == [50.0, 50.0] and all(math.isnan(v) for v in values[3:])


def test_the_table_counts_solved_seeds_and_marks_unreached_thresholds():
    runs = [
        learning.summarize("emotion", 0, [point(1000, 480.0)], 1000, 9.0, [490.0], ARGS),
        learning.summarize("emotion", 1, [point(1000, 40.0)], 3000, 60.0, [41.0], ARGS),
    ]
    row = plot_learning.table({"emotion": runs}).splitlines()[-1]
    assert "| 1/2 (final >= 475) |" in row and "1,000, >3,000" in row and "| 480, 40 | 490, 41 |" in row


def test_the_speed_benchmark_imports_and_builds_its_inputs_with_the_tests_layouts(monkeypatch):
    from emotion_rl.history import EPISODE_KEYS, HISTORY_KEYS

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its sections import each other by name, as when run as a script
    names = {"speed_common": "make_model", "speed_planner": "bench_planner", "speed_training": "bench_fit"}
    names["speed"] = "main"
    try:
        modules = {name: importlib.import_module(name) for name in names}
        for name, function in names.items():
            assert callable(getattr(modules[name], function))
        common = modules["speed_common"]
        history = common.make_history(3, 5)
        assert tuple(history.keys()) == HISTORY_KEYS and history.batch_size == (3, 5)
        assert int(history["action"].max()) < common.N_ACTIONS
        episodes = common.make_episodes(2, 7)
        assert set(episodes.keys()) == set(EPISODE_KEYS) and bool(episodes["mask"].all())
    finally:
        for name in names:
            sys.modules.pop(name, None)
