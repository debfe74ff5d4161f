"""Exploration by surprise (docs/data.md, "Novelty"): the policy hands over the next state it imagined, the data
side measures the model's surprise at the real one and, with ``novelty_weight``, adds it to the stored returns."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionDataModule, EmotionMCTS, EmotionModel, EmotionPolicy
from emotion_rl.data.envs import make_env
from emotion_rl.data.episodes import EpisodeAssembler, discounted_returns, surprise
from emotion_rl.data.selfplay import CollectionStats, SelfPlayCounters

from fakes import synthetic_batch


def test_surprise_is_the_squared_error_of_the_imagined_next_state_and_zero_without_a_prediction():
    predicted = torch.tensor([[0.0, 1.0], [2.0, 2.0], [float("nan"), 0.0]])
    actual = torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])
    assert surprise(predicted, actual).tolist() == [1.0, 8.0, 0.0]


def with_predictions(batch: TensorDict, error: float) -> TensorDict:
    """``predicted_observation`` = the real next observation shifted by ``error`` in its first coordinate."""
    predicted = batch.get(("next", "observation")).clone()
    predicted[..., 0] += error
    batch.set("predicted_observation", predicted)
    return batch


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_novelty_weight_adds_the_surprise_to_the_stored_returns_and_leaves_rewards_alone(weight):
    batch = with_predictions(synthetic_batch(1, 4, 0, init=[[0]], done=[[3]]), error=2.0)  # surprise 4 per step
    episodes = EpisodeAssembler(max_len=6, gamma=0.5, novelty_weight=weight).ingest(batch)
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert episodes["reward"][0, :4].tolist() == rewards.tolist()
    expected = discounted_returns(rewards + weight * 4.0, 0.5)
    torch.testing.assert_close(episodes["return"][0, :4], expected)
    assert "predicted_observation" not in episodes.keys()  # not stored: the replay keeps the episode keys


def test_novelty_needs_a_non_negative_weight():
    with pytest.raises(ValueError, match="novelty_weight"):
        EpisodeAssembler(max_len=4, novelty_weight=-1.0)
    with pytest.raises(ValueError, match="novelty_weight"):
        EmotionDataModule(novelty_weight=-0.1)


def test_the_policy_hands_over_the_next_state_it_imagined_for_the_emotion_acted_on():
    torch.manual_seed(0)
    model = EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2, context_window=8, imagined_action="one_hot")
    policy = EmotionPolicy(model, EmotionMCTS(num_simulations=4), temperature=1.0)
    env = make_env("CartPole-v1", 3, seed=1)
    try:
        td = policy(env.reset())
    finally:
        env.close()
    with torch.no_grad():
        expected = model.evaluate(policy.histories())["dynamics"][torch.arange(3), td["emotion"]]
    torch.testing.assert_close(td["predicted_observation"], expected)


def test_collection_stats_average_the_surprise_over_the_states_with_a_prediction():
    batch = with_predictions(synthetic_batch(2, 3, 0, init=[[0], [0]], done=[[], []]), error=1.0)
    batch["predicted_observation"][1, 2] = float("nan")  # one state without a prediction: not counted
    batch.set("prior", torch.full((2, 3, batch["policy_target"].shape[-1]), 0.125))
    stats = CollectionStats()
    stats.add(batch)
    taken = stats.take([], SelfPlayCounters(), 1.0)
    assert taken["surprise"].item() == pytest.approx(1.0)
    assert math.isnan(stats.take([], SelfPlayCounters(), 1.0)["surprise"].item())  # nothing new since
