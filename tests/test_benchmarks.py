"""The reporting logic of benchmarks/learning.py and benchmarks/plot_learning.py on made-up runs, and the speed
benchmark's modules and inputs.

The benchmarks themselves (training runs of minutes) never run in the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from argparse import Namespace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"benchmarks_{name}"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


learning = load("learning")
plot_learning = load("plot_learning")
ARGS = Namespace(
    config="c.yaml", env_id="CartPole-v1", threshold=475.0, budget=3000, eval_episodes=20, hold_floor=400.0
)


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


def test_the_screen_table_gives_each_variant_its_scores_iqm_held_count_and_search_gains(tmp_path):
    screen_table = load("screen_table")

    def write(variant: str, seed: int, score: float, search: float, prior: float, old: bool = False) -> None:
        rows = {"search": {"mean": search}, "values": {"mean": search - 5}, "prior": {"mean": prior}}
        rows["emotion_0"] = {"mean": 9.0}
        curve = [point(1000, 480.0), point(2000, 300.0 if seed == 0 else 490.0), point(3000, score)]
        result = learning.summarize(variant, seed, curve, 3000, 100.0, [score + 1], ARGS)
        if old:  # written before the hold protocol: no score, judged by the final mean
            result.update(score=None, held=None, protocol="first", final_return_mean=score)
        gain = {"rows": rows, "heads": {"pairwise_agreement": 0.5 if variant == "base" else 0.25}}
        (tmp_path / f"{variant}_s{seed}.json").write_text(json.dumps({**result, "search_gain": gain}))

    for seed, score in enumerate([100.0, 200.0, 300.0, 400.0, 500.0]):
        write("base", seed, score, search=score, prior=score - 10)
        write("other", seed, score + 50, search=score, prior=score + 10)  # the prior beats the search
        write("older", seed, score, search=score, prior=score - 10, old=True)
    text = screen_table.table(tmp_path, baseline="base")
    base, older, other = text.splitlines()[2:5]
    assert base.startswith("| base |") and older.startswith("| older |") and other.startswith("| other |")
    # the score of seed 4: the last-third mean of its evaluations at 2,000 and 3,000 env steps, (490 + 500) / 2
    assert "| 495.0 (500 / 490 / 9) |" in base and "| 200.0 (100 / 90 / 9) |" in base  # seed 0: (300 + 100) / 2
    # IQM of the scores 200, 345, 395, 445, 495; held by the seeds that never fell below 400 after reaching 475
    assert "| 395 | 2/5 | 5/5 | +5.0 | +10.0 | +291.0 | 0.50 |" in base
    assert "| 420 | 2/5 | 0/5 | +5.0 | -10.0 | +291.0 | 0.25 |" in other
    assert "| 500.0 (475 at 1,000) (500 / 490 / 9) |" in older and "| 300 | - | 5/5 |" in older


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


def test_an_ad_hoc_variant_is_a_name_and_overrides_split_at_the_commas_that_start_an_option():
    assert learning.parse_variant("fast=--model.planner.num_simulations=8,--data.batch_size=32") == (
        "fast",
        ["--model.planner.num_simulations=8", "--data.batch_size=32"],
    )
    assert learning.parse_variant("w.2=--model.x=[1,2],--model.y=a") == ("w.2", ["--model.x=[1,2]", "--model.y=a"])
    for bad in (
        "fast",  # no overrides
        "fast=",
        "fast=model.x=1",  # not an option
        "fast=-model.x=1",
        "a b=--model.x=1",  # not a file name
        "sims8=--model.planner.num_simulations=9",  # a named variant
        "ppo=--model.x=1",
        "acro=--data.env_id=Acrobot-v1",  # set by --env-id
        "s=--seed_everything=3",
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            learning.parse_variant(bad)


def test_ad_hoc_variants_run_with_emotion_and_their_overrides_are_recorded(tmp_path):
    argv = [
        "--out",
        str(tmp_path),
        "--variant",
        "fast=--model.planner.num_simulations=8",
        "--variant",
        "deep=--model.x=1",
    ]
    args = learning.parse(argv)
    assert args.variants == ["emotion", "fast", "deep"]
    assert learning.overrides_of(args, "fast") == ["--model.planner.num_simulations=8"]
    assert learning.overrides_of(args, "sims8") == ["--model.planner.num_simulations", "8"]
    assert learning.parse([*argv, "--variants", "ppo"]).variants == ["ppo", "fast", "deep"]
    assert learning.parse(["--out", str(tmp_path)]).variants == ["emotion", "ppo"]
    result = learning.summarize("fast", 0, [point(1000, 480.0)], 1000, 8.0, [490.0], args)
    assert result["variant"] == "fast" and result["overrides"] == ["--model.planner.num_simulations=8"]
    assert result["env_id"] == "CartPole-v1" and result["train_s_per_env_step"] == pytest.approx(0.008)
    assert learning.summarize("ppo", 0, [], 1000, 8.0, [490.0], args)["overrides"] == []
    with pytest.raises(SystemExit):
        learning.parse([*argv, "--variant", "fast=--model.y=2"])  # the same name twice


def test_protocol_defaults_follow_the_environment_and_flags_override_them():
    cartpole = learning.parse([])
    assert cartpole.env_id == "CartPole-v1"  # the config's env
    assert (cartpole.threshold, cartpole.budget, cartpole.eval_every) == (475.0, 30_000, 1_000)
    assert cartpole.seeds == [0, 1, 2, 3, 4] and learning.ROOT / cartpole.out == learning.RESULTS / "CartPole-v1"
    acrobot = learning.parse(["--env-id", "Acrobot-v1"])
    assert (acrobot.threshold, acrobot.budget) == (-100.0, 50_000)
    assert learning.ROOT / acrobot.out == learning.RESULTS / "Acrobot-v1"
    flagged = learning.parse(["--env-id", "Acrobot-v1", "--threshold", "-150", "--budget", "9000", "--out", "x"])
    assert (flagged.threshold, flagged.budget, flagged.eval_every, flagged.out) == (-150.0, 9000, 2_000, "x")
    other = learning.parse(["--env-id", "MountainCarContinuous-v0"])  # not listed: Gymnasium's threshold
    assert (other.threshold, other.budget) == (90.0, learning.OTHER_ENV["budget"])


def test_ppo_takes_the_zoo_hyperparameters_of_the_environment():
    cartpole = learning.ppo_hyperparameters("CartPole-v1")
    assert (cartpole["n_envs"], cartpole["n_steps"], cartpole["normalize"]) == (8, 32, False)
    kwargs = learning.ppo_kwargs(cartpole)
    assert "n_envs" not in kwargs and "normalize" not in kwargs and kwargs["batch_size"] == 256
    assert kwargs["learning_rate"](0.5) == pytest.approx(0.0005) and kwargs["clip_range"](1.0) == pytest.approx(0.2)
    acrobot = learning.ppo_hyperparameters("Acrobot-v1")
    assert (acrobot["n_envs"], acrobot["n_steps"], acrobot["gae_lambda"], acrobot["normalize"]) == (16, 256, 0.94, True)
    assert learning.ppo_hyperparameters("Pendulum-v1") == learning.PPO_DEFAULT


def test_cost_only_compares_two_variants_for_a_fixed_number_of_env_steps_without_evaluations():
    args = learning.parse(["--cost-only", "--variants", "emotion", "sims8", "--cost-steps", "500"])
    assert args.variants == ["emotion", "sims8"] and args.seeds == [0]
    assert args.budget == 500 and args.eval_every >= learning.NO_EVALUATION
    adhoc = learning.parse(["--cost-only", "--variant", "fast=--model.planner.num_simulations=8"])
    assert adhoc.variants == ["emotion", "fast"]
    with pytest.raises(SystemExit):
        learning.parse(["--cost-only", "--variants", "emotion", "sims8", "sims25"])
    cost = learning.cost_of("fast", 0, 500, 2.0, adhoc)
    assert cost["s_per_env_step"] == pytest.approx(0.004) and cost["overrides"] == ["--model.planner.num_simulations=8"]


def test_a_rerun_skips_only_the_results_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(learning, "RESULTS", tmp_path)
    (tmp_path / "emotion_s0.json").write_text("{}")  # another protocol's folder: not this run's
    (tmp_path / "CartPole-v1").mkdir()
    (tmp_path / "CartPole-v1" / "ppo_s0.json").write_text("{}")
    args = learning.parse([])
    assert args.out == str(tmp_path / "CartPole-v1")
    assert learning.result_path(args, "ppo", 0) == tmp_path / "CartPole-v1" / "ppo_s0.json"
    assert learning.result_path(args, "emotion", 0) is None
    assert learning.result_path(learning.parse(["--env-id", "Acrobot-v1"]), "ppo", 0) is None


def run(variant: str, seed: int, reached: int | None, final: float, wall: float, env: str | None = None) -> dict:
    """A made-up result file: budget 5,000 env steps, threshold 475."""
    args = Namespace(config="configs/cartpole.yaml", env_id=env, threshold=475.0, budget=5000, eval_episodes=20)
    args.hold_floor = 400.0
    curve = [point(reached, 480.0)] if reached is not None else [point(5000, 100.0)]
    result = learning.summarize(variant, seed, curve, reached or 5000, wall, [final], args)
    if env is None:  # as an earlier version of learning.py wrote it
        del result["env_id"]
    return result


def test_the_table_shows_iqm_with_bootstrap_intervals_and_medians_counting_unreached_runs_as_the_budget():
    runs = [
        run("emotion", 0, 1000, 10.0, 30.0),
        run("emotion", 1, 2000, 20.0, 10.0),
        run("emotion", 2, None, 30.0, 50.0),
        run("emotion", 3, 3000, 40.0, 20.0),
        run("emotion", 4, None, 1000.0, 40.0),
    ]
    stats = plot_learning.seed_statistics(runs)
    assert stats["final_iqm"][0] == pytest.approx(30.0)  # the middle three of 10, 20, 30, 40, 1000
    assert stats["steps_iqm"][0] == pytest.approx((2000 + 3000 + 5000) / 3)  # unreached runs count as 5,000
    assert stats["steps_median"] == 3000 and stats["wall_median"] == 30.0
    for point_estimate, (low, high) in (stats["final_iqm"], stats["steps_iqm"]):
        assert low < point_estimate < high
    assert 10.0 <= stats["final_iqm"][1][0] and stats["final_iqm"][1][1] <= 1000.0
    assert 1000 <= stats["steps_iqm"][1][0] and stats["steps_iqm"][1][1] <= 5000
    assert plot_learning.seed_statistics(runs) == stats  # fixed bootstrap seed: the same table every time
    same = [run("ppo", seed, 4000, 500.0, 5.0) for seed in range(3)]
    assert plot_learning.seed_statistics(same)["final_iqm"] == (500.0, (500.0, 500.0))
    single = [run("sims8", 0, None, 20.0, 60.0)]
    assert plot_learning.seed_statistics(single)["steps_iqm"] == (5000.0, None)

    rows = plot_learning.table({"emotion": runs, "ppo": same, "sims8": single}).splitlines()
    assert len(rows[0].split("|")) == len(rows[2].split("|")) == 12  # ten columns
    final_low, final_high = stats["final_iqm"][1]
    steps_low, steps_high = stats["steps_iqm"][1]
    assert rows[2].endswith(
        f"| 30 [{final_low:,.0f}, {final_high:,.0f}] | 3,333 [{steps_low:,.0f}, {steps_high:,.0f}] | 3,000 | 30 |"
    )
    assert rows[3].endswith("| 500 [500, 500] | 4,000 [4,000, 4,000] | 4,000 | 5 |")
    assert rows[4].endswith("| 20 (1 seed) | 5,000 (1 seed) | 5,000 | 60 |")


def test_results_load_by_environment_from_the_folder_and_its_per_env_subfolders(tmp_path):
    def write(path: Path, result: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))

    write(tmp_path / "emotion_s0.json", run("emotion", 0, 1000, 500.0, 9.0))  # earlier version: names no env
    write(tmp_path / "emotion_s1.json", run("emotion", 1, 1000, 100.0, 9.0))
    write(tmp_path / "CartPole-v1" / "emotion_s1.json", run("emotion", 1, 2000, 490.0, 9.0, "CartPole-v1"))
    write(tmp_path / "CartPole-v1" / "cost" / "x.json", {"runs": []})
    write(tmp_path / "CartPole-v1" / "emotion_vs_ppo_s0.json", {"runs": [], "seed": 0})  # not a run
    assert [r["final_return_mean"] for r in plot_learning.load(tmp_path)["emotion"]] == [500.0, 490.0]
    write(tmp_path / "Acrobot-v1" / "ppo_s0.json", run("ppo", 0, None, -120.0, 9.0, "Acrobot-v1"))
    with pytest.raises(ValueError, match="several environments"):
        plot_learning.load(tmp_path)
    assert set(plot_learning.load(tmp_path, env_id="CartPole-v1")) == {"emotion"}
    acrobot = plot_learning.load(tmp_path, env_id="Acrobot-v1")
    assert list(acrobot) == ["ppo"] and plot_learning.load(tmp_path / "Acrobot-v1") == acrobot
    assert plot_learning.load(tmp_path, seeds=[1], env_id="CartPole-v1")["emotion"][0]["reached_env_steps"] == 2000


def test_an_ad_hoc_variant_is_labelled_by_its_overrides():
    args = Namespace(**vars(ARGS))
    args.adhoc = {"fast": ["--model.planner.num_simulations=8"]}
    fast = learning.summarize("fast", 0, [point(1000, 480.0)], 1000, 9.0, [490.0], args)
    assert plot_learning.label("fast", [fast]) == "fast: --model.planner.num_simulations=8"
    assert plot_learning.label("sims8", [fast]) == plot_learning.LABELS["sims8"]
    assert (
        plot_learning.table({"fast": [fast]}).splitlines()[-1].startswith("| fast: --model.planner.num_simulations=8 |")
    )


@pytest.fixture
def speed():
    """The speed benchmark (one script: its sections, what they share and its driver) and the collection benchmark."""
    return Namespace(speed=load("speed"), collection=load("collection"))


def tiny_sizes(common):
    """Every section's sizes cut to a few environments, steps and simulations (no subprocesses)."""
    import dataclasses

    return dataclasses.replace(
        common.QUICK,
        planner_envs=(2,),
        histories=(5,),
        simulations=6,
        literal_envs=1,
        f64_rows=1,
        min_time=0.0,
        min_reps=1,
        overhead_envs=(2,),
        overhead_histories=(5,),
        train_episodes=1,
        train_length=4,
        timestep_steps=2,
        episode_reps=1,
        memory_envs=(1, 2),
        memory_sims=(2, 4),
        memory_histories=(4,),
        rss_points=(),
    )


def test_the_speed_benchmark_imports_and_builds_its_inputs_with_the_tests_layouts(speed):
    from emotion_rl.history import EPISODE_KEYS, HISTORY_KEYS

    functions = {"speed": ("make_model", "bench_planner", "bench_fit", "main"), "collection": ("measure",)}
    for name, names in functions.items():
        assert all(callable(getattr(getattr(speed, name), function)) for function in names)
    common = speed.speed
    history = common.make_history(3, 5)
    assert tuple(history.keys()) == HISTORY_KEYS and history.batch_size == (3, 5)
    assert int(history["action"].max()) < common.N_ACTIONS
    episodes = common.make_episodes(2, 7)
    assert set(episodes.keys()) == set(EPISODE_KEYS) and bool(episodes["mask"].all())
    assert common.make_model(context_window=8).context_window == 8


def test_the_model_call_timer_wraps_the_fused_adapter_without_changing_the_search(speed):
    import torch

    common, planner_module = speed.speed, speed.speed
    model, history, planner = common.make_model(16), common.make_history(3, 6), common.make_planner(50)
    timer = planner_module.ModelCallTimer(common.make_model(16))
    timed_out, plain = planner.search(timer.search_model, history), planner.search(model, history)
    assert torch.equal(timed_out["visit_counts"], plain["visit_counts"])
    assert timer.calls["search_prefix"] == 1 and timer.calls["children"] == 1 and timer.calls["expand"] >= 1
    assert timer.calls["heads"] >= 2  # the root's, and inside the children call (nested: counted, not timed)
    assert set(timer.seconds) == {"search_prefix", "heads", "children", "expand"} and timer.total > 0
    timer.reset()
    assert timer.total == 0 and not timer.calls


def test_every_speed_section_runs_at_tiny_sizes_and_the_targets_table_reads_them(speed):
    common, planner, training = speed.speed, speed.speed, speed.speed
    sizes = tiny_sizes(common)
    results: dict = {"planner": {}, "overhead": {}, "model_time": {}}
    tables = [
        planner.bench_planner(sizes, results),
        planner.bench_overhead(sizes, results),
        training.bench_training(sizes, results),
        planner.bench_memory(sizes, 1, results),
    ]
    row = results["planner"][(2, 5)]
    assert row["same32"] == (1, 1) and row["same64"] == (1, 1)  # the literal reference agrees
    assert row["planner_calls"] >= 2 and results["overhead"][(2, 5)] >= 1.0
    assert results["training"]["k"] == 2
    memory = results["memory"][(2, 4, 4)]
    assert memory["peak"] >= memory["after_encode"] > 0 and memory["tree"] > 0
    for table in tables:
        assert table.rows and table.markdown().startswith("### ")
    targets = speed.speed.targets_table(sizes, results)
    assert [r[0] for r in targets.rows][0].startswith("planner vs literal")


def test_the_collection_benchmark_measures_an_in_process_collector(speed):
    args = Namespace(env="CartPole-v1", envs=2, simulations=2, frames=4, steps_per_batch=2)
    assert speed.collection.measure(0, args) > 0


def test_scrub_paths_removes_the_installed_files_the_repository_and_a_revision_tree(tmp_path: Path) -> None:
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    log = tmp_path / "run.log"
    tree = tmp_path / "revision-tree"
    log.write_text(f"{site}/lightning/cli.py:1: warning\n{learning.ROOT}/configs/base.yaml\n--out {tree}/out\n")
    learning.scrub_paths(log, {str(tree): "<abc1234>"})
    text = log.read_text()
    assert text == "<site-packages>/lightning/cli.py:1: warning\nconfigs/base.yaml\n--out <abc1234>/out\n"


def test_the_hold_protocol_trains_the_budget_and_scores_the_last_third_and_whether_the_run_held():
    args = learning.parse(["--out", "x", "--budget", "3000"])
    assert args.max_minutes == math.inf and args.hold_floor == 400.0
    for removed in (["--protocol", "first"], ["--continue-after", "5000"]):  # the earlier protocol is gone
        with pytest.raises(SystemExit):
            learning.parse(["--out", "x", *removed])
    curve = [point(1000, 480.0), point(2000, 390.0), point(3000, 500.0)]
    result = learning.summarize("emotion", 0, curve, 3000, 30.0, [500.0], args)
    assert result["score"] == pytest.approx(445.0)  # the evaluations at 2,000 and 3,000 env steps
    assert result["held"] is False and result["reached_env_steps"] == 1000 and result["protocol"] == "hold"
    kept = learning.summarize("emotion", 0, [point(1000, 480.0), point(3000, 450.0)], 3000, 30.0, [500.0], args)
    assert kept["held"] is True and kept["score"] == 450.0 and "stays_solved" not in kept


def test_the_paired_decisions_table_puts_each_runs_two_decisions_side_by_side(tmp_path):
    screen = load("screen_table")
    args = Namespace(**vars(ARGS))
    curve = [point(1000, 480.0), point(2000, 390.0), point(3000, 500.0)]
    for p, other in zip(curve, (470.0, 450.0, 490.0), strict=True):
        p["return_mean_by_action"] = other
    result = learning.summarize("emotion", 0, curve, 3000, 30.0, [400.0], args)
    result.update(final_return_mean_by_action=480.0, score_by_action=470.0)
    rows = {"search": 400.0, "search_by_action": 480.0, "values": 490.0, "prior": 100.0}
    result["search_gain"] = {"rows": {name: {"mean": mean} for name, mean in rows.items()}}
    (tmp_path / "emotion_s0.json").write_text(json.dumps(result))
    line = screen.decisions(tmp_path).splitlines()[-1]
    assert line == "| emotion | 0 | 445.0 | 470.0 | 400.0 | 480.0 | False | True | 400.0 | 480.0 | 490.0 | 100.0 |"
    del result["score_by_action"]
    (tmp_path / "emotion_s0.json").write_text(json.dumps(result))
    assert screen.decisions(tmp_path) == ""  # no paired decision: no table
