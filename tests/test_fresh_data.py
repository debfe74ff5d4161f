"""Fresh data (docs/data.md, "Replay" and "Replay ratio"): a replay bounded in env steps that evicts whole episodes
oldest first, and the number of training batches per collection set by a replay ratio."""

from __future__ import annotations

import io
import random

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionDataModule
from emotion_rl.data.episodes import EpisodeAssembler
from emotion_rl.data.rate import UpdateRate
from emotion_rl.data.replay import EpisodeReplay
from emotion_rl.data.selfplay import SelfPlayCounters

from fakes import COUNTER_ID, FakeAgent, fake_policy, make_episodes, synthetic_batch


def kept(replay: EpisodeReplay) -> list[tuple[int, ...]]:
    """The kept episodes as tuples of their observations' step field, oldest first."""
    episodes = replay.episodes()
    return [
        tuple(episodes["observation"][k, : int(n), 1].long().tolist()) for k, n in enumerate(episodes["mask"].sum(-1))
    ]


def numbered(lengths: list[int], first: int) -> TensorDict:
    """Episodes of ``lengths`` (max 6 steps) whose steps carry the running numbers ``first, first + 1, ...``."""
    init, done, t = [], [], 0
    for length in lengths:
        init.append(t)
        done.append(t + length - 1)
        t += length
    return EpisodeAssembler(max_len=6).ingest(synthetic_batch(1, t, first, init=[init], done=[done]))


def test_a_replay_bounded_in_steps_evicts_whole_episodes_oldest_first_and_keeps_the_rest_intact():
    rng = random.Random(0)
    replay = EpisodeReplay(capacity_episodes=1000, max_episode_steps=6, capacity_steps=20)
    assert replay.storage is None and replay.size == 26  # room for the capacity and one more longest episode
    added: list[tuple[int, ...]] = []
    for _ in range(60):
        lengths = [rng.randint(1, 6) for _ in range(rng.randint(1, 3))]
        start = len(added) and added[-1][-1] + 1
        replay.extend(numbered(lengths, start))
        for length in lengths:
            added.append(tuple(range(start, start + length)))
            start += length
        expected, total = [], 0
        for episode in reversed(added):  # the newest episodes whose steps fit
            if total + len(episode) > 20:
                break
            expected.insert(0, episode)
            total += len(episode)
        assert kept(replay) == expected  # whole, in order: nothing overwritten that is still kept
        assert replay.stored_steps == total <= 20 and len(replay) == len(expected)
    replay.seed(0)
    batch = replay.sample_windows(64, 3)
    rows = zip(batch["observation"][..., 1], batch["mask"], strict=True)
    drawn = {tuple(row[mask].long().tolist()) for row, mask in rows}
    assert all(any(set(window) <= set(episode) for episode in expected) for window in drawn), "an evicted step drawn"


def test_a_step_bounded_replay_comes_back_from_its_state_dict_and_keeps_evicting():
    replay = EpisodeReplay(capacity_episodes=1000, max_episode_steps=6, capacity_steps=10)
    replay.extend(make_episodes([4, 5, 3, 6]))
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    buffer.seek(0)
    restored = EpisodeReplay(capacity_episodes=1000, max_episode_steps=6, capacity_steps=10)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert kept(restored) == kept(replay) and restored.stored_steps == replay.stored_steps == 9
    assert (restored.oldest_episode, len(restored)) == (replay.oldest_episode, 2)
    for r in (replay, restored):
        r.extend(make_episodes([2]))
    assert kept(restored) == kept(replay) and restored.stored_steps == 8  # the 3-step episode went


def test_the_episode_count_still_bounds_the_replay_and_a_replay_must_hold_one_longest_episode():
    replay = EpisodeReplay(capacity_episodes=2, max_episode_steps=6, capacity_steps=100)
    replay.extend(make_episodes([1, 1, 1]))
    assert len(replay) == 2 and replay.stored_steps == 2  # whichever limit is reached first evicts
    with pytest.raises(ValueError, match=r"capacity_steps \(5\) must hold at least one whole episode"):
        EpisodeReplay(capacity_episodes=10, max_episode_steps=6, capacity_steps=5)
    with pytest.raises(
        ValueError, match=r"replay_capacity_steps \(one longest episode at least\) must be an integer >= 6"
    ):
        EmotionDataModule(COUNTER_ID, replay_capacity_steps=5)
    data = EmotionDataModule(COUNTER_ID, replay_capacity_steps=6)
    assert data.replay.capacity_steps == 6 and data.replay_capacity_steps == 6


def test_a_replay_ratio_sets_the_batches_per_collection_and_refuses_a_conflicting_count():
    rate = UpdateRate(None, 256, frames=64, batch_size=64, window=32)  # the shipped config: 8 batches
    assert rate.per_collection == 8 and rate.ratio == 256
    assert UpdateRate(None, 16, frames=64, batch_size=64, window=32).per_collection == 0.5
    assert UpdateRate(8, 256, frames=64, batch_size=64, window=32).per_collection == 8  # agreeing: accepted
    assert UpdateRate(None, None, 64, 64, 32).per_collection == 4 and UpdateRate(3, None, 64, 64, None).ratio is None
    with pytest.raises(ValueError, match=r"replay_ratio=64 asks for 2 batches per collection .* gives 256; give one"):
        EmotionDataModule(
            COUNTER_ID, frames_per_batch=64, batch_size=64, context_window=32, updates_per_collection=8, replay_ratio=64
        )
    with pytest.raises(ValueError, match="replay_ratio needs windows"):
        EmotionDataModule(COUNTER_ID, replay_ratio=64)
    with pytest.raises(ValueError, match="replay_ratio must be a number > 0"):
        EmotionDataModule(COUNTER_ID, context_window=4, replay_ratio=0)
    data = EmotionDataModule(
        COUNTER_ID, num_envs=3, frames_per_batch=16, batch_size=2, context_window=4, replay_ratio=3
    )
    assert data.updates_per_collection == pytest.approx(3 * 18 / 8)  # frames rounded up to a multiple of num_envs


def test_a_fractional_rate_is_carried_between_collections_and_the_budgets_last_collection_trains():
    counters = SelfPlayCounters()
    assert [counters.updates(0.5, reached=False) for _ in range(6)] == [0, 1, 0, 1, 0, 1]
    assert [counters.updates(2.75, reached=False) for _ in range(4)] == [2, 3, 3, 3]  # 11 in 4 collections
    assert counters.updates(0.25, reached=True) == 1  # the stream's last batch must say the budget was reached
    assert [SelfPlayCounters().updates(8, reached=False) for _ in range(2)] == [8, 8]


def test_the_stream_trains_the_ratios_batches_and_logs_the_effective_ratio_and_the_stored_steps():
    data = EmotionDataModule(
        COUNTER_ID,
        num_envs=2,
        frames_per_batch=8,
        batch_size=2,
        context_window=4,
        replay_ratio=2,  # 2 x 8 / (2 x 4) = 2 batches per collection
        warmup_episodes=1,
        replay_capacity_steps=12,
    )
    data.connect(FakeAgent(lambda greedy: _windowed(fake_policy(greedy))))
    batches = []
    for batch in data._training_batches():
        batches.append(batch)
        if len(batches) == 12:
            break
    steps = [int(b["stats"]["env_steps"]) for b in batches]
    assert all(steps.count(s) == 2 for s in set(steps))  # two batches per collection
    trained = torch.cumsum(torch.stack([b["episodes"]["mask"].sum() for b in batches]), 0)
    ratio = [float(b["stats"]["replay_ratio"]) for b in batches]
    assert ratio == pytest.approx([t.item() / s for t, s in zip(trained, steps, strict=True)])
    assert data.counters.trained_steps == int(trained[-1])
    stored = [int(b["stats"]["stored_steps"]) for b in batches]
    assert max(stored) <= 12 and stored[-1] == data.replay.stored_steps and min(stored) > 0
    state = data.state_dict()
    assert state["trained_steps"] == data.counters.trained_steps and "update_credit" in state


def _windowed(policy):
    policy.context_window = 4
    return policy
