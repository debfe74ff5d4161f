"""emotion_rl.evaluation.depth and benchmarks/search_depth.py: the depth bookkeeping on trees and episodes worked out
by hand, the recording of the search on a tiny model (it changes nothing the agent does), and the command on the
shipped model."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionMCTS, EmotionModel
from emotion_rl.data.envs import make_env
from emotion_rl.data.rollout import play
from emotion_rl.evaluation import RecordingPlanner, depth
from emotion_rl.policy import EmotionPolicy

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def sd():
    """The package's depth reading with the benchmark's command line (``table``, ``parse``, ``main``) beside it."""
    spec = importlib.util.spec_from_file_location("search_depth_script", BENCHMARKS / "search_depth.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    commands = {name: getattr(script, name) for name in ("table", "parse", "main")}
    names = {name: getattr(depth, name) for name in dir(depth) if not name.startswith("_")}
    return SimpleNamespace(**{**names, **commands, "measure": depth.measure_depth, "first_episodes": depth.episodes_of})


# ---------------------------------------------------------------------------------------------- worked by hand
# s_0..s_4 = 0..4 (one number each); a_t = 0, 1, 0, 1; e_t = 1, 0, 1, 1; r_t = 1; the pole fell after step 3.
# gamma 0.5: G = 1.875, 1.75, 1.5, 1; return_scale 2: y = 3.75, 3.5, 3.0, 2.0.
GAMMA, SCALE = 0.5, 2.0
Y = np.array([3.75, 3.5, 3.0, 2.0])


def hand_episode(sd, terminated: bool = True):
    return sd.Episode(
        observations=np.arange(5.0).reshape(5, 1),
        actions=np.array([0, 1, 0, 1]),
        emotions=np.array([1, 0, 1, 1]),
        rewards=np.ones(4),
        terminated=terminated,
    )


def hand_search(sd):
    """The search at s_1 (E = 2, 4 nodes): root -(e 0)-> node 1 -(e 1)-> node 2, along e_1 = 0, e_2 = 1; node 2
    is a leaf and node 3 unused. The states on that path are off by 0.1, 0.5 and 1.0 from s_2, s_3, s_4."""
    child_state = np.full((4, 2, 1), 9.0)
    child_state[0, 0], child_state[0, 1], child_state[1, 1], child_state[2, 1] = 1.9, 5.0, 3.5, 3.0
    from_real = np.full((4, 2, 1), np.nan)
    from_real[2, 1], from_real[3, 1] = 2.75, 4.5  # from the real s_2 and s_3, along e_2 = e_3 = 1
    return sd.Search(
        children=np.array([[1, -1], [-1, 2], [-1, -1], [-1, -1]]),
        child_state=child_state,
        child_value=np.array([[3.0, 0.0], [9.0, 3.25], [9.0, 1.5], [0.0, 0.0]]),
        child_visits=np.array([[2, 0], [1, 0], [0, 1], [0, 0]]),
        child_value_sum=np.array([[7.0, 0.0], [0.5, 0.0], [0.0, 2.5], [0.0, 0.0]]),
        node_value=np.array([3.2, 2.5, 2.0, 0.0]),
        node_actions=np.array([[1, 0], [0, 1], [0, 1], [-1, -1]]),  # imagined: a = 1 (taken), 1 (not 0), 1 (taken)
        from_real=from_real,
    )


def by_kind(records):
    out = {}
    for record in records:
        out.setdefault(record["kind"], []).append(record)
    return out


def test_returns_are_discounted_from_each_step_and_cut_while_the_missing_tail_weighs(sd):
    np.testing.assert_allclose(sd.discounted_returns(np.ones(4), GAMMA), [1.875, 1.75, 1.5, 1.0])
    np.testing.assert_allclose(sd.discounted_returns(np.array([1.0, 2.0, 3.0]), GAMMA), [2.75, 3.5, 3.0])
    # truncated after 4 steps: the tails weigh 0.5^4, 0.5^3, 0.5^2, 0.5 against a tolerance of 0.1
    assert sd.cut_returns(hand_episode(sd, terminated=False), GAMMA, 0.1).tolist() == [False, True, True, True]
    assert sd.cut_returns(hand_episode(sd, terminated=True), GAMMA, 0.1).tolist() == [False] * 4


def test_the_path_follows_the_emotions_taken_as_far_as_the_tree_was_expanded(sd):
    children = hand_search(sd).children
    assert sd.tree_path(children, [0, 1, 1]) == [0, 1, 2]  # node 2 has no children
    assert sd.tree_path(children, [0, 0]) == [0, 1]
    assert sd.tree_path(children, [1, 0]) == [0]
    assert sd.tree_path(children, []) == [0]


def test_the_readings_of_a_search_compare_depth_k_with_step_t_plus_k(sd):
    episode, search = hand_episode(sd), hand_search(sd)
    cut = np.array([False, True, False, True])  # made up: each reading must carry its own step's flag
    kinds = by_kind(sd.step_readings(search, episode, 1, SCALE * sd.discounted_returns(episode.rewards, GAMMA), cut, 3))
    np.testing.assert_allclose(SCALE * sd.discounted_returns(episode.rewards, GAMMA), Y)
    states = kinds["state"]
    assert [r["depth"] for r in states] == [1, 2, 3]
    np.testing.assert_allclose([r["error"] for r in states], [0.1, 0.5, 1.0])  # against s_2, s_3, s_4
    np.testing.assert_allclose([r["guess_error"] for r in states], [1.0, 2.0, 3.0])  # s_1 against s_2, s_3, s_4
    assert math.isnan(states[0]["real_parent_error"])  # depth 1 is the root's own prediction
    np.testing.assert_allclose([r["real_parent_error"] for r in states[1:]], [0.25, 0.5])
    assert [r["action_match"] for r in states] == [True, False, True]
    assert [r["path_match"] for r in states] == [True, False, False]
    # node_k against y_{1+k}: the taken emotion's stored value, the leaf value, Q where visited (not at node 1)
    assert [r["depth"] for r in kinds["value"]] == [0, 1, 2]
    np.testing.assert_allclose([r["error"] for r in kinds["value"]], [3.0 - 3.5, 3.25 - 3.0, 1.5 - 2.0])
    np.testing.assert_allclose([r["error"] for r in kinds["leaf"]], [3.2 - 3.5, 2.5 - 3.0, 2.0 - 2.0])
    assert [r["depth"] for r in kinds["q"]] == [0, 2]
    np.testing.assert_allclose([r["error"] for r in kinds["q"]], [7.0 / 2 - 3.5, 2.5 - 2.0])
    assert [r["cut"] for r in kinds["value"]] == [True, False, True]  # cut[1], cut[2], cut[3]
    assert [r["cut"] for r in kinds["q"]] == [True, True]


def test_the_readings_stop_where_the_tree_or_the_episode_stops(sd):
    episode, search = hand_episode(sd), hand_search(sd)
    cut = np.zeros(4, dtype=bool)
    # at s_0 the agent took e_0 = 1, a root child never expanded: the root's prediction of s_1 only, V at node_0
    kinds = by_kind(sd.step_readings(search, episode, 0, Y, cut, 3))
    assert [r["depth"] for r in kinds["state"]] == [1]
    np.testing.assert_allclose(kinds["state"][0]["error"], 5.0 - 1.0)
    assert [r["depth"] for r in kinds["value"]] == [0] and "q" not in kinds  # child (0, 1) never visited
    np.testing.assert_allclose(kinds["value"][0]["error"], 0.0 - 3.75)
    # at the last step s_3 (e_3 = 1): the terminal s_4 is the only state left to predict, y_3 the only return
    kinds = by_kind(sd.step_readings(search, episode, 3, Y, cut, 3))
    assert [r["depth"] for r in kinds["state"]] == [1] and [r["depth"] for r in kinds["leaf"]] == [0]
    np.testing.assert_allclose([kinds["state"][0]["error"], kinds["leaf"][0]["error"]], [5.0 - 4.0, 3.2 - 2.0])
    # max_depth 2 reads no deeper than depth 2 (states) and node 1 (values), even where the tree goes further
    kinds = by_kind(sd.step_readings(search, episode, 1, Y, cut, 2))
    assert [r["depth"] for r in kinds["state"]] == [1, 2] and [r["depth"] for r in kinds["value"]] == [0, 1]


def test_the_root_gaps_read_the_completed_q_and_the_actions_of_the_children(sd):
    three = sd.Search(
        children=np.full((1, 3), -1),
        child_state=np.zeros((1, 3, 1)),
        child_value=np.array([[0.1, 0.2, 0.45]]),
        child_visits=np.array([[1, 2, 0]]),
        child_value_sum=np.array([[0.4, 1.0, 0.0]]),
        node_value=np.array([0.3]),
        node_actions=np.array([[0, 1, 1]]),
    )
    # completed Q: [0.4, 0.5, 0.45] (the unvisited child reads its own V^e)
    np.testing.assert_allclose(sd.root_gaps(three), [0.05, 0.1])  # best 0.5 (action 1), other action: 0.4
    three.node_actions[0] = [1, 1, 1]
    gap, action_gap = sd.root_gaps(three)
    assert gap == pytest.approx(0.05) and math.isnan(action_gap)  # every child takes the same action


def test_the_summary_keeps_exact_and_cut_returns_apart_and_divides_the_gaps_by_the_roots_q_error(sd):
    records = [
        {"kind": "state", "depth": 1, "error": 0.1, "guess_error": 1.0, "real_parent_error": math.nan,
         "action_match": True, "path_match": True},
        {"kind": "state", "depth": 1, "error": 0.3, "guess_error": 1.0, "real_parent_error": math.nan,
         "action_match": False, "path_match": False},
        {"kind": "q", "depth": 0, "error": 0.3, "cut": False},
        {"kind": "q", "depth": 0, "error": -0.4, "cut": False},
        {"kind": "q", "depth": 0, "error": 10.0, "cut": True},
    ]  # fmt: skip
    gaps = [(0.1, 0.5), (0.5, math.nan), (math.nan, math.nan)]
    report = sd.summarize(records, {1: 4}, gaps, max_depth=1)
    depth1 = report["dynamics"]["1"]
    assert depth1["n"] == 2 and depth1["reached"] == 0.5 and depth1["action_match"] == 0.5
    assert depth1["mean"] == pytest.approx(0.2) and depth1["rmse"] == pytest.approx(math.sqrt(0.05))
    assert depth1["path_matched"]["n"] == 1 and depth1["path_matched"]["rmse"] == pytest.approx(0.1)
    assert depth1["from_real_state"]["n"] == 0
    q = report["values"]["q"]["0"]
    assert q["exact"]["n"] == 2 and q["exact"]["rmse"] == pytest.approx(math.sqrt(0.125))
    assert q["exact"]["mean"] == pytest.approx(-0.05) and q["exact"]["median"] == pytest.approx(-0.05)
    assert q["cut"]["n"] == 1 and q["cut"]["rmse"] == pytest.approx(10.0)
    assert report["values"]["value"]["0"]["exact"]["n"] == 0
    gap = report["root_gap"]
    assert gap["value_rmse"] == pytest.approx(math.sqrt(0.125))
    assert gap["best_second"]["n"] == 2 and gap["best_second"]["share_below_rmse"] == 0.5  # 0.28 and 1.41
    assert gap["best_second"]["ratio_quantiles"]["0.5"] == pytest.approx(0.3 / math.sqrt(0.125))
    assert gap["best_other_action"]["n"] == 1 and gap["best_other_action"]["share_below_rmse"] == 0.0


def test_each_envs_first_episode_is_cut_from_a_rollout_with_its_last_next_state(sd):
    n, length = 2, 5
    observation = torch.arange(10.0).view(n, length, 1)
    done = torch.zeros(n, length, 1, dtype=torch.bool)
    done[0, 2] = done[1, 4] = True
    terminated = torch.zeros_like(done)
    terminated[0, 2] = True  # env 0 fell at its third step; env 1 reached the time limit
    steps = TensorDict(
        observation=observation,
        action=torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 0, 0], [1, 1, 0, 0, 1]]), 2),
        emotion=torch.tensor([[3, 2, 1, 0, 0], [4, 5, 6, 7, 0]]),
        next=TensorDict(
            observation=observation + 0.5,
            reward=torch.ones(n, length, 1),
            done=done,
            terminated=terminated,
            batch_size=[n, length],
        ),
        batch_size=[n, length],
    )
    first, second = sd.first_episodes(steps)
    assert first.length == 3 and first.terminated and not second.terminated and second.length == 5
    np.testing.assert_allclose(first.observations[:, 0], [0.0, 1.0, 2.0, 2.5])  # s_3 = the last next observation
    np.testing.assert_allclose(second.observations[:, 0], [5.0, 6.0, 7.0, 8.0, 9.0, 9.5])
    assert first.actions.tolist() == [0, 1, 1] and first.emotions.tolist() == [3, 2, 1]
    assert second.actions.tolist() == [1, 1, 0, 0, 1] and first.rewards.tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------- a tiny model
def tiny_agent(num_simulations: int = 12):
    torch.manual_seed(0)
    model = EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2, context_window=6).double()
    planner = EmotionMCTS(num_simulations=num_simulations, max_depth=3)
    value_loss = SimpleNamespace(gamma=0.9, return_scale=0.1)
    return SimpleNamespace(model=model, planner=planner, losses=SimpleNamespace(value=value_loss))


def test_recording_the_search_changes_no_action_and_keeps_each_searchs_own_tree(sd):
    agent = tiny_agent()
    played = {}
    for name in ("plain", "recorded"):
        recorder = RecordingPlanner(agent.planner, keep_all=True)
        planner = agent.planner if name == "plain" else recorder
        policy = EmotionPolicy(agent.model, planner, greedy=True, generator=torch.Generator().manual_seed(0))
        env = make_env("CartPole-v1", 2, seed=3, max_episode_steps=9)
        try:
            played[name] = play(env, policy, 9, break_when_any_done=False, break_when_all_done=True)
        finally:
            env.close()
    assert torch.equal(played["plain"]["action"], played["recorded"]["action"])
    assert torch.equal(played["plain"]["emotion"], played["recorded"]["emotion"])
    assert len(recorder.searches) == played["recorded"].batch_size[1]
    t = 7  # past the context window of 6: the recorded history is the one the search read
    history, result = recorder.searches[t]
    assert history.batch_size[1] == 6
    tree = sd.tree_arrays(agent.model, result)
    again = agent.planner.search(agent.model, history)["tree"]
    for key in ("children", "child_state", "child_value", "child_visits", "child_value_sum"):
        np.testing.assert_array_equal(tree[key], again[key].numpy())
    np.testing.assert_allclose(tree["node_value"], again["child_value"].mean(-1).numpy())


def test_measure_reads_every_decision_along_the_path_the_agent_took(sd):
    agent = tiny_agent()
    settings = {"env_id": "CartPole-v1", "time_limit": 12, **{key: None for key in sd.ENV_OPTIONS}}
    report = sd.measure(agent, settings, episodes=2, seed=1)
    decisions = sum(report["lengths"])
    assert report["decisions"] == decisions and len(report["returns"]) == 2
    assert report["recomputed_state_max_error"] < 1e-9  # each path's nodes recomputed from the search's history
    dynamics, values = report["dynamics"], report["values"]
    assert dynamics["1"]["n"] == decisions and dynamics["1"]["reached"] == 1.0  # the root predicts every child
    assert 0 < dynamics["2"]["n"] <= decisions - 2 and dynamics["3"]["n"] <= dynamics["2"]["n"]
    assert dynamics["2"]["from_real_state"]["n"] == dynamics["2"]["n"]
    assert values["value"]["0"]["exact"]["n"] + values["value"]["0"]["cut"]["n"] == decisions
    assert values["leaf"]["1"]["exact"]["n"] + values["leaf"]["1"]["cut"]["n"] == dynamics["2"]["n"]
    assert report["root_gap"]["best_second"]["n"] == decisions
    assert (report["gamma"], report["return_scale"]) == (0.9, 0.1)
    assert "| 2 |" in sd.table(report)
    again = sd.measure(tiny_agent(), settings, episodes=2, seed=1)
    assert json.dumps(again) == json.dumps(report)  # deterministic with a seed; plain numbers only


# ---------------------------------------------------------------------------------------------- the command
def test_the_command_on_the_shipped_model_writes_its_json_and_table(sd, tmp_path):
    out = tmp_path / "depth.json"
    args = [str(ROOT / "models" / "cartpole.ckpt"), "--env-id", "CartPole-v1", "--episodes", "1", "--time-limit", "4"]
    report = sd.main([*args, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["checkpoint"] == "models/cartpole.ckpt"  # inside the checkout: no machine path
    assert report["lengths"] == [4] and report["terminated"] == 0  # it balances; the time limit cuts every return
    assert report["values"]["q"]["0"]["exact"]["n"] == 0 and report["values"]["q"]["0"]["cut"]["n"] == 4
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("`python benchmarks/search_depth.py ") and "| imagined state, depth k |" in markdown
    with pytest.raises(SystemExit):
        sd.parse([args[0], "--cut-tolerance", "1.5"])
