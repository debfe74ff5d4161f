"""The margin of the search's decision (emotion_rl.mcts.root_gap): worked by hand, written by the policy from its
own search's tree, kept per state by the self-play stream, and compared with the value error in the diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionAgent, EmotionMCTS, EmotionModel, EmotionPolicy, GumbelRoot, PriorPlanner, testing
from emotion_rl.data.selfplay import CollectionStats, SelfPlayCounters
from emotion_rl.diagnostics import gap_diagnostics, learning_diagnostics
from emotion_rl.losses import masked_mean, step_weight
from emotion_rl.mcts.root_gap import ROOT_GAP_KEYS, completed_root_q, root_q_gaps

from conftest import random_episodes


def root_tree(visits, value_sum, child_value) -> TensorDict:
    """A tree ``[B]`` whose root (node 0 of 2) has these children; node 1's row is noise that must not be read."""
    rows = [torch.tensor(x, dtype=torch.float64) for x in (visits, value_sum, child_value)]
    visits, value_sum, child_value = (torch.stack([r, torch.full_like(r, 7.0)], dim=1) for r in rows)
    return TensorDict(
        child_visits=visits.long(), child_value_sum=value_sum, child_value=child_value, batch_size=[len(rows[0])]
    )


def test_the_gaps_are_worked_out_by_hand_from_the_completed_q_and_the_childrens_actions():
    tree = root_tree(
        visits=[[1, 2, 0], [0, 4, 1]],
        value_sum=[[0.4, 1.0, 0.0], [0.0, 2.0, 0.3]],
        child_value=[[0.1, 0.2, 0.45], [0.9, 0.1, 0.1]],
    )
    q = completed_root_q(tree)  # unvisited children read their own V^e
    torch.testing.assert_close(q, torch.tensor([[0.4, 0.5, 0.45], [0.9, 0.5, 0.3]], dtype=torch.float64))
    gap, action_gap = root_q_gaps(q, torch.tensor([[0, 1, 1], [0, 1, 0]]))
    torch.testing.assert_close(gap, torch.tensor([0.05, 0.4], dtype=torch.float64))
    # row 0: the best (0.5, action 1) against the best of action 0 (0.4); row 1: 0.9 (action 0) against 0.5
    torch.testing.assert_close(action_gap, torch.tensor([0.1, 0.4], dtype=torch.float64))
    gap, action_gap = root_q_gaps(q, torch.tensor([[1, 1, 1], [0, 0, 1]]))
    assert math.isnan(action_gap[0]) and action_gap[1] == pytest.approx(0.6)  # one action: no margin
    gap, action_gap = root_q_gaps(q[:, :1], torch.zeros(2, 1, dtype=torch.long))
    assert gap.isnan().all() and action_gap.isnan().all()  # one emotion: nothing to compare


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("root_rule", [None, GumbelRoot(considered=4)])
def test_the_search_returns_the_completed_q_that_its_tree_gives(root_rule, dtype):
    """``completed_q`` (the root rule's reading) equals :func:`completed_root_q` of the returned tree, bit for bit,
    with visited and unvisited children at the roots."""
    torch.manual_seed(1)
    model = EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2, context_window=8).to(dtype)
    planner = EmotionMCTS(num_simulations=6, root_rule=root_rule)
    history = testing.random_history(3, 5, 4, 2, seed=2, dtype=dtype)
    result = planner.search(model, history)
    visits = result["visit_counts"]
    assert (visits > 0).any() and (visits == 0).any()
    expected = completed_root_q(result["tree"])
    assert result["completed_q"].dtype == dtype and torch.equal(result["completed_q"], expected)


def step_input(n: int, seed: int) -> TensorDict:
    generator = torch.Generator().manual_seed(seed)
    return TensorDict(
        observation=torch.randn(n, 4, generator=generator, dtype=torch.float64),
        is_init=torch.full((n, 1), seed == 0),
        prev_reward=torch.ones(n, 1),
        batch_size=[n],
    )


def test_the_policy_writes_the_gaps_of_the_tree_it_acted_on():
    torch.manual_seed(0)
    model = EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2, context_window=8).double()
    planner = EmotionMCTS(num_simulations=10, root_rule=GumbelRoot(considered=4))
    policy = EmotionPolicy(model, planner, greedy=True)
    for step in range(3):
        out = policy(step_input(3, step))
    history = policy.histories()  # what the last search read (its last entry's action and emotion are never read)
    result = planner.search(model, history)
    expected = root_q_gaps(completed_root_q(result["tree"]), result["action_logits"].argmax(-1))
    for key, value in zip(ROOT_GAP_KEYS, expected, strict=True):
        assert out[key].dtype == torch.float32 and out[key].shape == (3,)
        torch.testing.assert_close(out[key], value.float())
    no_tree = EmotionPolicy(model, PriorPlanner(), greedy=True)(step_input(2, 0))
    assert all(no_tree[key].isnan().all() for key in ROOT_GAP_KEYS)


def test_the_stream_keeps_each_collected_states_finite_gaps_until_they_are_taken():
    stats = CollectionStats()

    def collection(gaps, action_gaps) -> TensorDict:
        n = len(gaps)
        return TensorDict(
            emotion=torch.zeros(1, n, dtype=torch.long),
            policy_target=torch.full((1, n, 2), 0.5),
            root_q_gap=torch.tensor([gaps]),
            root_action_gap=torch.tensor([action_gaps]),
            batch_size=[1, n],
        )

    stats.add(collection([0.1, 0.2], [0.3, float("nan")]))
    stats.add(collection([0.4], [0.5]))
    taken = stats.take([], SelfPlayCounters(), temperature=0.0)
    torch.testing.assert_close(taken["root_q_gap"], torch.tensor([0.1, 0.2, 0.4]))
    torch.testing.assert_close(taken["root_action_gap"], torch.tensor([0.3, 0.5]))
    again = stats.take([], SelfPlayCounters(), temperature=0.0)
    assert again["root_q_gap"].numel() == 0 and again["root_action_gap"].numel() == 0


def test_the_diagnostics_compare_the_gaps_with_the_value_error_of_the_batch():
    torch.manual_seed(0)
    agent = EmotionAgent(obs_dim=4, n_actions=3, max_episode_steps=12, d_model=16, n_layers=1, n_heads=2).double()
    episodes = random_episodes([12, 7, 3], max_len=12, dtype=torch.float64)
    stats = TensorDict(root_q_gap=torch.tensor([0.1, 0.5, 0.2]), root_action_gap=torch.zeros(0))
    logs = learning_diagnostics(agent.model, agent.losses.value, episodes, stats)
    encoding = agent.model.encode(episodes)
    error = agent.model.emotion_values(encoding.hidden, episodes["emotion"]) - episodes["return"]  # return_scale 1
    rmse = masked_mean(error.pow(2), step_weight(episodes)).sqrt()
    torch.testing.assert_close(logs["diagnostics/value_rmse"], rmse)
    torch.testing.assert_close(logs["diagnostics/root_q_gap_over_value_rmse"], 0.2 / rmse)
    expected_share = sum(g < rmse for g in (0.1, 0.5, 0.2)) / 3
    assert logs["diagnostics/root_q_gap_below_value_rmse"].item() == pytest.approx(float(expected_share))
    assert "diagnostics/root_action_gap_over_value_rmse" not in logs  # no state carried that gap
    assert not any("gap" in key for key in learning_diagnostics(agent.model, agent.losses.value, episodes))
    by_hand = gap_diagnostics(stats, torch.tensor(0.25, dtype=torch.float64))
    assert by_hand["diagnostics/root_q_gap_over_value_rmse"].item() == pytest.approx(0.8)
    assert by_hand["diagnostics/root_q_gap_below_value_rmse"].item() == pytest.approx(2 / 3)
