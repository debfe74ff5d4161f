"""Exploration by surprise (docs/data.md, "Novelty"): the policy hands over the next state it imagined, the data
side measures the model's surprise at the real one and, with ``novelty_weight``, stores a bonus per step that every
value target adds to the reward (normalised and clipped, or decaying, as options)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionDataModule, EmotionMCTS, EmotionModel, EmotionPolicy, MonteCarlo
from emotion_rl.data.envs import make_env
from emotion_rl.data.episodes import EpisodeAssembler, discounted_returns, surprise
from emotion_rl.data.novelty import NoveltyBonus
from emotion_rl.data.selfplay import CollectionStats, SelfPlayCounters
from emotion_rl.losses import target_rewards

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
    assert episodes["novelty"][0].tolist() == [weight * 4.0] * 4 + [0.0, 0.0]  # the bonus, a key of its own
    expected = discounted_returns(rewards + weight * 4.0, 0.5)
    torch.testing.assert_close(episodes["return"][0, :4], expected)
    assert "predicted_observation" not in episodes.keys()  # not stored: the replay keeps the episode keys


def novel_episodes(weight: float, gamma: float) -> TensorDict:
    """Two terminated episodes (5 and 3 steps) whose steps carry surprises 1, 4, 9, ... (error 1, 2, 3, ...)."""
    batch = synthetic_batch(2, 5, 0, init=[[0], [0]], done=[[4], [2]])
    predicted = batch.get(("next", "observation")).clone()
    predicted[..., 0] += torch.arange(1.0, 6.0)
    batch.set("predicted_observation", predicted)
    return EpisodeAssembler(max_len=5, gamma=gamma, novelty_weight=weight).ingest(batch)


def test_the_value_targets_read_the_reward_with_the_novelty_bonus():
    """The Monte Carlo target is the stored return, which holds the bonus; past a row's end (here every row is cut
    as a window is, before its termination) y_{t+1} = (y_t - r_t) / gamma subtracts the reward with the bonus, so it
    continues the row's own returns."""
    gamma, scale = 0.9, 0.1
    episodes = novel_episodes(weight=0.5, gamma=gamma)
    episodes = episodes.apply(lambda x: x.double() if x.is_floating_point() else x)
    assert episodes["novelty"].abs().sum() > 0
    windows = episodes.clone()
    for key in ("done", "terminated", "truncated"):
        if key in windows.keys():
            windows[key] = torch.zeros_like(windows[key])
    y, next_y = MonteCarlo().targets(windows, None, gamma, scale)
    mask = episodes["mask"]
    torch.testing.assert_close(y, scale * episodes["return"])
    reward = (episodes["reward"] + episodes["novelty"]) * scale
    torch.testing.assert_close(next_y[mask], ((y - reward) / gamma)[mask])
    without_bonus = ((y - episodes["reward"] * scale) / gamma)[mask]
    assert not torch.allclose(next_y[mask], without_bonus)
    assert torch.equal(target_rewards(episodes), episodes["reward"] + episodes["novelty"])
    assert torch.equal(target_rewards(episodes.exclude("novelty")), episodes["reward"])  # hand-made batches


def test_the_novelty_bonus_is_standardised_by_its_running_statistics_and_clipped():
    rng = torch.Generator().manual_seed(0)
    bonus = NoveltyBonus(weight=2.0, normalize=True, clip=1.5)
    seen = []
    for _ in range(3):
        surprise_ = torch.rand(40, generator=rng) * 100.0  # raw errors of a wide observation range
        measured = torch.rand(40, generator=rng) > 0.2
        out = bonus(surprise_, measured)
        seen.append(surprise_[measured].double())
        everything = torch.cat(seen)
        mean, std = everything.mean(), everything.std(unbiased=False)
        expected = (2.0 * ((surprise_.double() - mean) / std).clamp(-1.5, 1.5)).float()
        torch.testing.assert_close(out[measured], expected[measured], rtol=1e-4, atol=1e-4)
        assert out[~measured].eq(0).all()  # no prediction, no bonus
    assert out.abs().max() <= 2.0 * 1.5 + 1e-6
    # in units of the surprise's spread: the same surprises 1000 times larger give the same bonus
    small, large = NoveltyBonus(1.0, normalize=True), NoveltyBonus(1.0, normalize=True)
    values = torch.rand(64, generator=rng)
    all_measured = torch.ones(64, dtype=torch.bool)
    torch.testing.assert_close(small(values, all_measured), large(1000.0 * values, all_measured), rtol=1e-4, atol=1e-4)
    raw = NoveltyBonus(1.0)(1000.0 * values, all_measured)
    torch.testing.assert_close(raw, 1000.0 * values)  # without normalize: the raw surprise, as before


def test_a_decaying_novelty_weight_falls_linearly_to_zero():
    bonus = NoveltyBonus(weight=0.8, decay_frames=1000)
    assert [bonus.weight_at(n) for n in (0, 250, 1000, 5000)] == pytest.approx([0.8, 0.6, 0.0, 0.0])
    ones, measured = torch.ones(3), torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(bonus(ones, measured, env_steps=500), torch.full((3,), 0.4))
    assert bonus(ones, measured, env_steps=1000).eq(0).all()
    assert NoveltyBonus(weight=0.8).weight_at(10**9) == 0.8  # no decay by default
    # the assembler places the weight with the env steps collected when the episode is stored
    batch = with_predictions(synthetic_batch(1, 4, 0, init=[[0]], done=[[3]]), error=1.0)
    episodes = EpisodeAssembler(max_len=4, novelty=NoveltyBonus(0.8, decay_frames=1000)).ingest(batch, env_steps=750)
    torch.testing.assert_close(episodes["novelty"][0], torch.full((4,), 0.2))


def test_the_novelty_statistics_are_saved_with_the_datamodule_and_restored():
    data = EmotionDataModule(novelty_weight=1.0, novelty_normalize=True, novelty_clip=3.0)
    data.novelty(torch.tensor([1.0, 2.0, 6.0]), torch.ones(3, dtype=torch.bool))
    state = data.state_dict()
    assert state["novelty"] == data.novelty.state_dict() and state["novelty"]["mean"] == pytest.approx(3.0, rel=1e-3)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = EmotionDataModule(novelty_weight=1.0, novelty_normalize=True, novelty_clip=3.0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    probe = torch.tensor([0.0, 4.0, 100.0])
    measured = torch.ones(3, dtype=torch.bool)
    assert torch.equal(restored.novelty(probe, measured), data.novelty(probe, measured))
    older = {key: value for key, value in state.items() if key != "novelty"}
    EmotionDataModule().load_state_dict(older)  # a checkpoint written before the statistics: fresh ones


def test_novelty_needs_a_non_negative_weight_and_sound_settings():
    with pytest.raises(ValueError, match="novelty_weight"):
        EpisodeAssembler(max_len=4, novelty_weight=-1.0)
    with pytest.raises(ValueError, match="novelty_weight"):
        EmotionDataModule(novelty_weight=-0.1)
    with pytest.raises(ValueError, match="EmotionDataModule: novelty_decay_frames must be an integer >= 0"):
        EmotionDataModule(novelty_decay_frames=-5)
    with pytest.raises(ValueError, match="EmotionDataModule: novelty_clip must be a finite number > 0"):
        EmotionDataModule(novelty_clip=0.0)


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
