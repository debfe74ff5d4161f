"""Episode replay: whole episodes, windows, state (spec 5 step 8, decision 15)."""

from __future__ import annotations

import io

import pytest
import torch

from emotion_rl.data.replay import EpisodeReplay
from emotion_rl.history import EPISODE_KEYS

from fakes import make_episodes


def test_replay_samples_whole_episodes_trimmed_to_the_longest():
    replay = EpisodeReplay(capacity_episodes=3)
    replay.extend(make_episodes([2, 3]))
    batch = replay.sample(16)
    assert batch.batch_size == (16, 3) and set(batch.keys()) == set(EPISODE_KEYS)
    assert set(batch["mask"].sum(-1).tolist()) == {2, 3}
    assert replay.sample(4, trim=False).batch_size == (4, 6)
    replay.extend(make_episodes([1, 1]))  # FIFO: the oldest is overwritten
    assert len(replay) == 3
    assert sorted(replay.episodes()["mask"].sum(-1).tolist()) == [1, 1, 3]


def test_replay_state_dict_round_trip_loads_with_weights_only():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 3, 4]))
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    buffer.seek(0)
    restored = EpisodeReplay(capacity_episodes=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(restored) == 3
    assert (restored.episodes().select(*EPISODE_KEYS) == replay.episodes().select(*EPISODE_KEYS)).all()
    restored.extend(make_episodes([5, 1]))  # the write cursor was restored too
    assert sorted(restored.episodes()["mask"].sum(-1).tolist()) == [1, 3, 4, 5]


def test_a_replay_saved_by_an_earlier_version_loads_with_the_keys_of_this_one():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 3]))
    state = replay.state_dict()
    steps = dict(state["steps"])
    steps["visit_distribution"] = steps.pop("policy_target")  # as written before the rename
    del steps["novelty"]  # and before the novelty bonus was stored per step
    restored = EpisodeReplay(capacity_episodes=4)
    restored.load_state_dict({**state, "steps": steps})
    assert torch.equal(restored.episodes()["policy_target"], replay.episodes()["policy_target"])
    assert restored.episodes()["novelty"].eq(0).all()
    restored.extend(make_episodes([1]))  # new episodes store the same keys
    assert "visit_distribution" not in restored.storage[:].keys()


def test_replay_windows_are_the_recent_history_of_a_uniformly_drawn_step():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 5]))
    replay.seed(3)
    stored = {int(ep["mask"].sum()): ep for ep in replay.episodes()}
    ends = set()
    for _ in range(40):
        windows = replay.sample_windows(8, window=3)
        assert windows.batch_size[0] == 8 and windows.batch_size[1] <= 3 and set(windows.keys()) == set(EPISODE_KEYS)
        for window in windows:
            valid = int(window["mask"].sum())
            assert valid >= 1 and window["mask"][:valid].all() and not window["mask"][valid:].any()  # left-aligned
            # a contiguous slice of one stored episode, ending at its step `end` and reaching back 3 steps at most
            matches = [
                (length, start)
                for length, episode in stored.items()
                for start in range(length - valid + 1)
                if torch.equal(episode["observation"][start : start + valid], window["observation"][:valid])
            ]
            assert len(matches) == 1, "the window is not one contiguous slice of a stored episode"
            length, start = matches[0]
            end = start + valid - 1
            assert valid == min(3, end + 1), "the window must hold the last 3 steps up to its end, or all from step 0"
            ends.add((length, end))
    assert ends == {(2, 0), (2, 1), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4)}, "every stored step can end a window"


def test_replay_window_draws_resume_from_the_state_dict():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 5, 4]))
    replay.seed(11)
    replay.sample_windows(4, window=2)
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    buffer.seek(0)
    expected = [replay.sample_windows(4, window=2) for _ in range(3)]
    restored = EpisodeReplay(capacity_episodes=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for want in expected:
        got = restored.sample_windows(4, window=2)
        assert all(torch.equal(got[key], want[key]) for key in ("observation", "mask")), "window draws diverged"


def step_weights(replay: EpisodeReplay, weighting: str, draws: int = 200) -> dict[int, float]:
    """Total loss weight each stored step got over ``draws`` batches of 64 windows of 3 (``weight``, else ``mask``)."""
    totals: dict[int, float] = {}
    for _ in range(draws):
        windows = replay.sample_windows(64, window=3, weighting=weighting)
        weight = windows.get("weight") if "weight" in windows.keys() else windows["mask"].float()
        for step, w in zip(windows["observation"][..., 1].flatten().tolist(), weight.flatten().tolist(), strict=True):
            totals[int(step)] = totals.get(int(step), 0.0) + w
    return totals


def test_uniform_window_weighting_gives_every_stored_step_the_same_expected_weight():
    replay = EpisodeReplay(capacity_episodes=4)
    replay.extend(make_episodes([2, 5, 9], max_len=9))  # 16 steps, ids 0..15 in observation[..., 1]
    replay.seed(5)
    uniform = step_weights(replay, "uniform")
    assert sorted(uniform) == list(range(16))
    expected = 200 * 64 * 3 / 16  # every window of 3 weighs 3 in expectation, spread over the 16 steps
    assert all(abs(total / expected - 1) < 0.1 for total in uniform.values()), uniform
    end = step_weights(replay, "end")  # today's weighting: an episode's last step is in 1 window of 3
    last, middle = end[15], end[11]  # last and 5th step of the 9-step episode
    assert last / middle < 0.5
    windows = replay.sample_windows(8, window=3, weighting="uniform")
    assert torch.equal(windows["weight"] > 0, windows["mask"]) and "weight" not in replay.sample_windows(8, 3).keys()
    with pytest.raises(ValueError, match="weighting must be one of"):
        replay.sample_windows(8, 3, weighting="steps")


def test_replay_keeps_the_newest_episodes_whole_when_the_storage_wraps():
    replay = EpisodeReplay(capacity_episodes=2, max_episode_steps=6)  # room for (2 + 1) * 6 steps
    for lengths in ([5, 6], [4, 6], [6, 3], [2, 5]):
        replay.extend(make_episodes(lengths))
    assert replay.cursor < replay.storage.max_size and len(replay) == 2
    assert sorted(replay.episodes()["mask"].sum(-1).tolist()) == [2, 5]
    replay.seed(0)
    for _ in range(20):  # never a remnant of an overwritten episode: every drawn episode starts at step 0
        batch = replay.sample(8)
        assert set(batch["mask"].sum(-1).tolist()) <= {2, 5}
        assert (batch["observation"][:, 0, 0] == 0).all()


def test_replay_state_grows_with_the_steps_stored_not_with_capacity_times_time_limit():
    def size(lengths: list[int]) -> int:
        replay = EpisodeReplay(capacity_episodes=1000, max_episode_steps=500)
        replay.extend(make_episodes(lengths, max_len=500))
        buffer = io.BytesIO()
        torch.save(replay.state_dict(), buffer)
        return buffer.tell()

    small, large = size([10] * 10), size([10] * 40)
    per_step = (large - small) / 300
    assert per_step < 200, "a stored step costs more than its fields"
    assert small < 20_000 + 100 * per_step, "the checkpoint holds more than the steps stored (padding is back?)"
