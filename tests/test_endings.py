"""Why episodes end (docs/data.md, "Why episodes end"): terminated or truncated for every environment, and for
CartPole whether the cart left the track or the pole fell, as shares of the episodes finished since the last log."""

from __future__ import annotations

import math

import gymnasium
import pytest
import torch

from emotion_rl import EmotionDataModule
from emotion_rl.data.endings import EpisodeEndings, ending_shares
from emotion_rl.diagnostics import collection_metrics

from fakes import COUNTER_ID, FakeAgent, fake_policy


def test_cartpole_endings_read_gymnasiums_own_thresholds_from_the_final_state():
    endings = EpisodeEndings.for_env("CartPole-v1")
    assert endings.names == ("terminated", "truncated", "cart_position", "pole_angle")
    env = gymnasium.make("CartPole-v1").unwrapped
    x, angle = env.x_threshold, env.theta_threshold_radians
    off_track = torch.tensor([-(x + 0.01), 0.0, 0.05, 0.0])
    fallen = torch.tensor([0.5, 0.0, angle + 0.01, 0.0])
    both = torch.tensor([x + 0.1, 0.0, -(angle + 0.1), 0.0])
    inside = torch.tensor([x - 0.01, 0.0, angle - 0.01, 0.0])
    assert endings.classify(True, False, off_track) == {
        "terminated": True,
        "truncated": False,
        "cart_position": True,
        "pole_angle": False,
    }
    assert (
        endings.classify(True, False, fallen)["pole_angle"]
        and not endings.classify(True, False, fallen)["cart_position"]
    )
    assert endings.classify(True, False, both)["cart_position"] and endings.classify(True, False, both)["pole_angle"]
    truncated = endings.classify(False, True, inside)
    assert truncated == {"terminated": False, "truncated": True, "cart_position": False, "pole_angle": False}
    # a terminal state reached at the time limit counts as terminated: nothing follows it
    assert endings.classify(True, True, fallen)["truncated"] is False
    for generic in (
        EpisodeEndings.for_env("Acrobot-v1"),
        EpisodeEndings.for_env("CartPole-v1", env_wrappers=["fakes.DoubleObservation"]),  # observations changed
        EpisodeEndings.for_env("CartPole-v1", env_factory="fakes:make_countdown"),
    ):
        assert generic.names == ("terminated", "truncated")


def test_ending_shares_are_nan_when_no_episode_finished():
    endings = [{"terminated": True, "truncated": False}, {"terminated": False, "truncated": True}] * 2
    endings.append({"terminated": True, "truncated": False})
    shares = ending_shares(endings, ("terminated", "truncated"))
    assert shares["terminated"].item() == pytest.approx(0.6) and shares["truncated"].item() == pytest.approx(0.4)
    assert all(math.isnan(v.item()) for v in ending_shares([], ("terminated", "truncated")).values())


def test_the_stream_logs_why_the_episodes_since_the_last_batch_ended():
    data = EmotionDataModule(
        "CartPole-v1", num_envs=4, frames_per_batch=64, batch_size=2, warmup_episodes=1, time_limit=12, seed=3
    )
    data.connect(FakeAgent(fake_policy))
    stream = data._training_batches()
    counts = dict.fromkeys(("terminated", "truncated", "cart_position", "pole_angle"), 0.0)
    drained, logs = 0, {}
    while drained < 40:  # each batch's shares are over the episodes finished since the previous batch
        stats = next(stream)["stats"]
        finished, drained = int(stats["episodes"]) - drained, int(stats["episodes"])
        if finished:
            for name in counts:
                counts[name] += stats["endings"][name].item() * finished
            logs = collection_metrics(stats)
        else:
            assert all(math.isnan(share.item()) for share in stats["endings"].values())
    assert {f"episode/end_{name}" for name in counts} <= set(logs)
    stored = data.replay.episodes()  # nothing evicted: every finished episode
    lengths = stored["mask"].sum(-1)
    assert len(lengths) == drained
    rows = torch.arange(len(lengths))
    terminated, truncated = stored["terminated"][rows, lengths - 1], stored["truncated"][rows, lengths - 1]
    final = stored["next_observation"][rows, lengths - 1]
    assert terminated.any() and (truncated & ~terminated).any(), "the check needs both kinds of ending"
    assert counts["terminated"] == pytest.approx(float(terminated.sum()), abs=1e-3)
    assert counts["truncated"] == pytest.approx(float((truncated & ~terminated).sum()), abs=1e-3)
    env = gymnasium.make("CartPole-v1").unwrapped
    off_track = terminated & (final[:, 0].abs() > env.x_threshold)
    fallen = terminated & (final[:, 2].abs() > env.theta_threshold_radians)
    assert counts["cart_position"] == pytest.approx(float(off_track.sum()), abs=1e-3)
    assert counts["pole_angle"] == pytest.approx(float(fallen.sum()), abs=1e-3)
    assert off_track.any() or fallen.any()
    assert EmotionDataModule(COUNTER_ID).endings.names == ("terminated", "truncated")
