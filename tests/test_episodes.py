"""Episode assembly and discounted returns (spec 2.2.2, 3.3)."""

from __future__ import annotations

import pytest
import torch

from emotion_rl.data.episodes import EpisodeAssembler, discounted_returns
from emotion_rl.history import EPISODE_KEYS

from fakes import COUNTER_ID, E, collect, synthetic_batch


def test_discounted_returns_whole_episode_without_bootstrap():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    assert discounted_returns(rewards, 0.5).tolist() == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]
    assert discounted_returns(rewards, 1.0).tolist() == [6.0, 5.0, 3.0]
    assert discounted_returns(rewards, 0.0).tolist() == [1.0, 2.0, 3.0]
    long = discounted_returns(torch.ones(500), 0.99)
    assert long[0].item() == pytest.approx((1 - 0.99**500) / (1 - 0.99), rel=1e-6)


def test_episode_assembly_carries_partial_episodes_across_batches():
    assembler = EpisodeAssembler(max_len=8, gamma=0.5)
    # env 0: episode t=0..2 ends in batch 1, next one t=3..6 spans both batches; env 1: t=0..5 spans both batches
    first = assembler.ingest(synthetic_batch(2, 4, 0, init=[[0, 3], [0]], done=[[2], []]))
    assert first.batch_size == (1, 8)
    assert first["observation"][0, :3, 1].tolist() == [0, 1, 2]
    second = assembler.ingest(synthetic_batch(2, 4, 4, init=[[3], [2]], done=[[2], [1]]))
    assert second.batch_size == (2, 8)
    env0, env1 = second[0], second[1]
    assert env0["observation"][:, 0].eq(0).all() and env0["observation"][:4, 1].tolist() == [3, 4, 5, 6]
    assert env0["mask"].tolist() == [True] * 4 + [False] * 4
    assert env0["done"].tolist() == [False, False, False, True] + [False] * 4
    assert env0["reward"][:4].tolist() == [3, 4, 5, 6] and env0["reward"][4:].eq(0).all()
    assert env0["return"][:4].tolist() == discounted_returns(torch.tensor([3.0, 4, 5, 6]), 0.5).tolist()
    assert env0["return"][4:].eq(0).all()
    assert torch.equal(env0["next_observation"][:4, 1], env0["observation"][:4, 1] + 1)
    assert env1["observation"][:6, 1].tolist() == [0, 1, 2, 3, 4, 5] and env1["mask"].sum() == 6
    assert set(second.keys()) == set(EPISODE_KEYS)
    assert second["action"].dtype == torch.long and second["action"].shape == (2, 8)  # categorical from one-hot
    assert second["emotion"][0, :4].tolist() == ((second["action"][0, :4] + 3) % E).tolist()
    assert assembler.drain_finished() == ([3.0, 18.0, 15.0], [3, 4, 6])
    assert assembler.dropped_steps == 0
    # env 1's new episode (t=6, 7) is carried on
    third = assembler.ingest(synthetic_batch(2, 2, 8, init=[[], []], done=[[], [0]]))
    assert third["observation"][0, :3, 1].tolist() == [6, 7, 8] and third["mask"][0].sum() == 3


def test_episode_assembly_drops_episodes_whose_start_it_never_saw():
    assembler = EpisodeAssembler(max_len=8, gamma=1.0)
    assert assembler.ingest(synthetic_batch(1, 4, 0, init=[[2]], done=[[1]], one_hot=False)) is None
    assert assembler.dropped_steps == 2
    out = assembler.ingest(synthetic_batch(1, 2, 4, init=[[]], done=[[1]], one_hot=False))
    assert out["observation"][0, :4, 1].tolist() == [2, 3, 4, 5]
    # a reset without done (e.g. a collector reset) cuts the unfinished episode: it is dropped, not merged
    assert assembler.ingest(synthetic_batch(1, 4, 6, init=[[0, 2]], done=[[]], one_hot=False)) is None
    assert assembler.dropped_steps == 4  # steps 6, 7
    out = assembler.ingest(synthetic_batch(1, 4, 10, init=[[1, 3]], done=[[2]], one_hot=False))
    assert out["mask"].sum() == 2 and out["observation"][0, :2, 1].tolist() == [11, 12]
    assert assembler.dropped_steps == 7  # and the carried steps 8, 9 and step 10


def test_episode_longer_than_max_len_is_refused():
    assembler = EpisodeAssembler(max_len=3)
    with pytest.raises(RuntimeError, match="exceeds max_len 3"):
        assembler.ingest(synthetic_batch(1, 5, 0, init=[[0]], done=[[4]]))


def test_collected_episodes_are_whole_real_and_contiguous():
    assembler = EpisodeAssembler(max_len=6, gamma=0.9)
    episodes = [assembler.ingest(batch) for batch in collect(COUNTER_ID, num_envs=2, steps=5)]
    episodes = torch.cat([e for e in episodes if e is not None])
    assert episodes.batch_size[0] >= 3
    truncated = 0
    for episode in episodes:
        n = int(episode["mask"].sum())
        obs, next_obs = episode["observation"][:n], episode["next_observation"][:n]
        assert obs[:, 0].tolist() == list(range(n))  # starts at t = 0, no step missing or repeated
        assert torch.equal(obs[1:], next_obs[:-1])
        assert torch.equal(episode["reward"][:n], next_obs[:, 0] + 100 * episode["action"][:n])
        planned = int(obs[0, 1])
        assert n == min(planned, 6)
        truncated += planned > 6
        assert episode["done"][:n].tolist() == [False] * (n - 1) + [True]
        assert torch.allclose(episode["return"][:n], discounted_returns(episode["reward"][:n], 0.9))
        # spec 3.3: the stored distribution of step t is the one the search returned at step t (fake_policy's planner:
        # 13 of 20 visits on emotion (history length) % E, history length t + 1)
        expected = torch.full((n, E), 1 / 20)
        expected[torch.arange(n), (torch.arange(n) + 1) % E] = 13 / 20
        torch.testing.assert_close(episode["policy_target"][:n], expected)
        assert not episode["mask"][n:].any()


def test_terminated_and_truncated_are_stored_apart():
    assembler = EpisodeAssembler(max_len=6, gamma=0.9)
    episodes = [assembler.ingest(batch) for batch in collect(COUNTER_ID, num_envs=3, steps=6, seed=1)]
    episodes = torch.cat([e for e in episodes if e is not None])
    kinds = set()
    for episode in episodes:
        n = int(episode["mask"].sum())
        planned = int(episode["observation"][0, 1])  # the counter env terminates at its planned length
        last = [False] * (n - 1) + [True]
        assert episode["terminated"][:n].tolist() == ([False] * n if planned > 6 else last)
        assert episode["truncated"][:n].tolist() == (last if planned >= 6 else [False] * n)  # time limit 6
        assert torch.equal(episode["done"], episode["terminated"] | episode["truncated"])
        kinds.add((planned > 6, planned < 6))
    assert (True, False) in kinds and (False, True) in kinds, "both kinds of endings must occur"
    # without the keys (a hand-made batch), an end is a termination
    out = assembler.ingest(synthetic_batch(1, 3, 0, init=[[0]], done=[[2]]))
    assert out["terminated"][0, :3].tolist() == [False, False, True] and not out["truncated"].any()
