"""emotion_rl.evaluation.heads: the heads' agreement and usage, the disagreement check's rollouts on copies of the
env, and their place in the search-gain measurement and benchmarks/search_gain.py (tiny untrained model, a few
short episodes)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from emotion_rl.data.envs import make_env
from emotion_rl.evaluation import RecordingPlanner, gain_table, measure_gain, play_row
from emotion_rl.evaluation import heads as heads_module
from emotion_rl.history import History
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel

from fakes import FakeModel, register_counter

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
E = 8
SETTINGS = {"env_id": "CartPole-v1", "time_limit": 12, "env_kwargs": None, "env_wrappers": None, "env_factory": None}


@pytest.fixture(scope="module")
def bench():
    """The package's heads and gain modules, and ``benchmarks/search_gain.py`` (its command line) loaded by path."""
    spec = importlib.util.spec_from_file_location("search_gain_script", BENCHMARKS / "search_gain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    gain = SimpleNamespace(measure=measure_gain, play_row=play_row, table=gain_table, parse=script.parse)
    yield SimpleNamespace(heads=heads_module, gain=gain)


@pytest.fixture(scope="module")
def agent() -> SimpleNamespace:
    """An untrained tiny model (its heads disagree in many states) and a search of three simulations."""
    torch.manual_seed(0)
    model = EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2, context_window=16)
    return SimpleNamespace(model=model, planner=EmotionMCTS(num_simulations=3))


# ---------------------------------------------------------------------------------------------- agreement, usage
def test_head_agreement_on_states_worked_out_by_hand(bench):
    greedy = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2], [0, 1, 2, 0]])
    report = bench.heads.head_agreement(greedy, emotion=torch.tensor([1, 1, 3]))
    # pairs agreeing per state: (0,1), (2,3) -> 2/6; all 6 -> 6/6; (0,3) -> 1/6
    assert report["states"] == 3
    assert report["pairwise_agreement"] == pytest.approx((2 / 6 + 1 + 1 / 6) / 3)
    third = 1 / 3
    expected = [[1, 2 * third, third, 2 * third], [2 * third, 1, third, third], [third, third, 1, 2 * third]]
    expected.append([2 * third, third, 2 * third, 1])
    assert np.allclose(report["agreement_matrix"], expected)
    assert report["max_pair_agreement"] == pytest.approx(2 * third)
    assert report["all_agree"] == pytest.approx(third)
    assert report["usage"] == pytest.approx([0, 2 * third, 0, third])


def test_assigned_heads_agree_on_three_pairs_in_seven(bench):
    """Eight emotions, emotion e always proposing action e mod 2 (the assigned heads): 12 of 28 pairs agree."""
    greedy = (torch.arange(E) % 2).expand(5, E)
    report = bench.heads.head_agreement(greedy, torch.arange(5))
    assert report["pairwise_agreement"] == pytest.approx(12 / 28) and report["all_agree"] == 0.0
    assert report["max_pair_agreement"] == 1.0 and sum(report["usage"]) == pytest.approx(1.0)
    one = bench.heads.head_agreement(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert math.isnan(one["pairwise_agreement"]) and one["all_agree"] == 1.0  # one emotion: no pair to compare


def test_candidates_are_the_searchs_action_then_each_other_proposed_one_with_its_favourite_emotion(bench):
    history = History.empty(1, 3, (4,), torch.float32, "cpu")[0]
    history.mask = torch.tensor([True, True, False])
    history.action[1], history.emotion[1] = 0, 0  # the search acted with emotion 0, action 0
    point = bench.heads.BranchPoint(
        env=0,
        step=1,
        env_copy=None,
        history=history,
        greedy=torch.tensor([0, 2, 2, 1, 1]),
        policy_target=torch.tensor([0.5, 0.1, 0.2, 0.1, 0.1]),
    )
    # action 2: emotions 1, 2 -> 2 (higher target); action 1: emotions 3, 4 tie -> 3 (the lower index)
    assert point.candidates() == [(0, 0), (1, 3), (2, 2)]


def test_the_reservoir_keeps_every_state_of_a_stream_with_the_same_probability(bench):
    generator, n, k, runs = torch.Generator().manual_seed(0), 10, 3, 4000
    counts = np.zeros(n)
    for _ in range(runs):
        kept = []
        for item in range(n):
            slot = bench.heads.reservoir_slot(item + 1, k, generator)
            if slot == len(kept):
                kept.append(item)
            elif slot is not None:
                kept[slot] = item
        assert len(kept) == k
        counts[kept] += 1
    assert np.allclose(counts / runs, k / n, atol=0.03)  # 0.3 each; the first k kept: 1.0 for three, 0 for the rest


# ---------------------------------------------------------------------------------------------- rollouts on copies
class PushPlanner:
    """Every emotion's head proposes action ``push``; all visits on emotion 0. Records the histories it sees."""

    def __init__(self, push: int) -> None:
        self.push, self.histories = push, []

    def search(self, model, history, generator=None, explore=False) -> TensorDict:
        self.histories.append(history.clone())
        n = history.batch_size[0]
        logits = torch.full((n, E, 2), -1.0)
        logits[..., self.push] = 1.0
        target = torch.zeros(n, E)
        target[:, 0] = 1.0
        return TensorDict(
            policy_target=target, visit_counts=torch.zeros(n, E), prior=target, action_logits=logits, batch_size=[n]
        )


def real_cartpole(steps: int):
    """A started two-env CartPole (env seed 0) after ``steps`` steps of action 1, and its gymnasium envs."""
    env = make_env("CartPole-v1", 2, seed=0)
    td = env.reset()
    for _ in range(steps):
        td["action"] = torch.tensor([[0, 1], [0, 1]])
        td = env.step(td)["next"]
    return env, td


def gym_state(gym_env) -> tuple:
    return tuple(gym_env.unwrapped.state), gym_env._elapsed_steps, gym_env.unwrapped.np_random.bit_generator.state


def test_a_rollout_on_a_copy_plays_the_action_then_the_policy_and_leaves_the_real_env_unchanged(bench):
    env, td = real_cartpole(3)
    real = bench.heads.gym_envs(env)
    assert np.allclose(real[1].unwrapped.state, td["observation"][1].numpy())  # the envs behind the batch, in order
    before = [gym_state(one) for one in real]
    history = History.empty(1, 4, (4,), torch.float32, "cpu")[0]
    history.observation[:] = torch.arange(4.0).unsqueeze(-1)
    history.action[:], history.emotion[:] = 1, 5
    planner = PushPlanner(push=0)
    returns = bench.heads.rollout_branches(
        FakeModel(context_window=64), planner, [(real[1], history, 1), (real[1], history, 0), (real[0], history, 1)], 60
    )
    assert [gym_state(one) for one in real] == before  # the real envs did not move
    for k, (gym_env, first) in enumerate([(real[1], 1), (real[1], 0), (real[0], 1)]):  # by hand: the action, then 0s
        by_hand, action, expected = copy.deepcopy(gym_env), first, 0.0
        for _ in range(60):
            _, reward, terminated, truncated, _ = by_hand.step(action)
            expected, action = expected + reward, 0
            if terminated or truncated:
                break
        assert returns[k] == expected < 60  # each ended within the horizon (pushing one way)
    seen = planner.histories[0]  # the first search continued the given history: 4 steps, then the copy's state
    assert seen.batch_size == (3, 5) and seen.mask.all()
    assert torch.equal(seen.observation[0, :4], history.observation) and seen.action[0, :4].eq(1).all()
    assert seen.reward[0, 3] == 1.0 and torch.allclose(seen.observation[2, 4], torch.as_tensor(by_hand_first(real[0])))
    short = bench.heads.rollout_branches(FakeModel(context_window=64), PushPlanner(0), [(real[1], history, 1)], 3)
    assert short == [3.0]  # the horizon counts the first action
    env.close()


def by_hand_first(gym_env) -> np.ndarray:
    """The observation after action 1 from a copy of ``gym_env``."""
    return copy.deepcopy(gym_env).step(1)[0]


def test_the_check_refuses_an_env_it_cannot_copy_before_playing(bench, agent):
    counter = register_counter("EmotionRLTest/HeadsCounter-v0", 10)
    settings = {**SETTINGS, "env_id": counter, "time_limit": None}
    with pytest.raises(ValueError, match=r"copy only CartPoleEnv, AcrobotEnv, MountainCarEnv.*is a CounterEnv.*"):
        bench.gain.measure(agent, settings, 1, 0, disagreements=1)
    with pytest.raises(ValueError, match="env_factory 'x:y' makes a TorchRL env it cannot copy.*--disagreements 0"):
        bench.heads.check_copyable({**SETTINGS, "env_factory": "x:y"})
    for env_id in ("CartPole-v1", "Acrobot-v1", "MountainCar-v0"):
        bench.heads.check_copyable({**SETTINGS, "env_id": env_id})
    with pytest.raises(SystemExit):
        bench.gain.parse(["x.ckpt", "--disagreements", "-1"])


# ---------------------------------------------------------------------------------------------- in the benchmark
def test_the_search_row_is_the_same_with_and_without_the_check_and_the_check_repeats_with_its_seed(bench, agent):
    play = bench.gain.play_row
    plain = play(agent, agent.planner, SETTINGS, 2, 0)
    checked = play(agent, agent.planner, SETTINGS, 2, 0, heads=True, disagreements=2, horizon=5)
    again = play(agent, agent.planner, SETTINGS, 2, 0, heads=True, disagreements=2, horizon=5)
    for key in ("returns", "lengths", "start_observations", "action_changed", "emotion_changed", "states"):
        assert checked[key] == plain[key]
    check = checked["disagreements"]
    assert check["states"] == 4, "the untrained heads disagree at more than two states per episode"
    for point in check["points"]:
        assert len(point["returns"]) == len(set(point["actions"])) >= 2 and point["step"] < 12
        assert all(0 < r <= min(5, 12 - point["step"]) for r in point["returns"])  # horizon, time limit
    differences = [p["returns"][0] - max(p["returns"][1:]) for p in check["points"]]
    assert check["mean_return_difference"] == pytest.approx(np.mean(differences))
    assert check["search_at_least_as_good"] == np.mean([d >= 0 for d in differences])
    del checked["seconds"], again["seconds"], checked["disagreements"]["seconds"], again["disagreements"]["seconds"]
    assert again == checked  # deterministic with the seed
    assert checked["heads"]["states"] == checked["states"] and sum(checked["heads"]["usage"]) == pytest.approx(1.0)


def test_the_report_has_the_heads_and_the_check_in_json_and_table(bench, agent, tmp_path):
    report = bench.gain.measure(agent, SETTINGS, 2, 0, rows=("prior",), log=lambda *_: None, disagreements=1)
    written = json.loads(json.dumps(report))
    assert list(written["rows"]) == ["search", "prior"]
    assert "heads" not in written["rows"]["search"] and "disagreements" not in written["rows"]["search"]
    assert len(written["heads"]["agreement_matrix"]) == E and written["disagreements"]["states"] == 2
    assert written["disagreements"]["horizon"] == 100
    text = bench.gain.table(report)
    assert "pairwise agreement" in text and "where the heads disagree (2 states, rollouts of 100 steps)" in text
    plain = bench.gain.measure(agent, SETTINGS, 1, 0, rows=(), log=lambda *_: None)
    assert plain["disagreements"] is None and "where the heads disagree" not in bench.gain.table(plain)


def test_the_recorder_keeps_copies_of_the_env_at_the_states_it_keeps(bench, agent):
    from emotion_rl.data.rollout import play
    from emotion_rl.policy import EmotionPolicy

    env = make_env("CartPole-v1", 2, seed=0, max_episode_steps=12)
    policy = EmotionPolicy(agent.model, RecordingPlanner(agent.planner), greedy=True)
    recorder = bench.heads.HeadRecorder(policy, env, per_episode=3, generator=torch.Generator().manual_seed(0))
    steps = play(env, recorder, 12, break_when_any_done=False, break_when_all_done=True)
    env.close()
    points = recorder.branch_points()
    assert [p.env for p in points] == [0, 0, 0, 1, 1, 1]
    for point in points:
        last = int(point.history.lengths()) - 1
        assert last == point.step == point.env_copy._elapsed_steps  # the state before the real step
        assert np.allclose(point.env_copy.unwrapped.state, point.history.observation[last].numpy(), atol=1e-6)
        assert torch.equal(point.history.observation[last], steps["observation"][point.env, point.step])
        assert point.history.action[last] == point.greedy[point.history.emotion[last]]  # the search's greedy action
        assert len(set(point.greedy.tolist())) > 1  # kept only where the heads disagree
