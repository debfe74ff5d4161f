"""Reanalyze (as in MuZero): fresh searches on stored real histories refresh the stored policy targets."""

from __future__ import annotations

import pytest
import torch

from emotion_rl import EmotionAgent, EmotionDataModule, EmotionMCTS

from conftest import N_ACTIONS, OBS_DIM, random_episodes
from fakes import register_counter

ENV = register_counter("ReanalyzeCounter-v0", time_limit=12, n_actions=N_ACTIONS)


def _agent() -> EmotionAgent:
    torch.manual_seed(0)
    return EmotionAgent(
        OBS_DIM, N_ACTIONS, max_episode_steps=12, d_model=16, n_layers=1, n_heads=2, planner=EmotionMCTS(6)
    )


def test_reanalyze_is_the_search_on_each_real_prefix():
    agent, episodes = _agent(), random_episodes([5, 9, 2], max_len=9, seed=1)
    fresh = agent.reanalyze(episodes)
    for b, length in enumerate([5, 9, 2]):
        for t in range(length):
            prefix = episodes[b : b + 1, : t + 1].select("observation", "action", "emotion", "reward")
            expected = agent.planner.search(agent.model, prefix)["policy_target"][0]
            torch.testing.assert_close(fresh[b, t], expected, msg=f"episode {b} step {t}")
        assert fresh[b, length:].eq(0).all(), "padding got a distribution"
    assert torch.equal(agent.reanalyze(episodes, chunk=4), fresh), "chunking changed the result"


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_datamodule_refreshes_that_share_of_each_batch_and_writes_it_back_to_the_replay(fraction):
    agent = _agent()
    data = EmotionDataModule(ENV, num_envs=1, batch_size=4, reanalyze_fraction=fraction, seed=3)
    data.connect(agent)
    stored = random_episodes([6, 12, 3, 8, 10], max_len=12, seed=2)
    data.replay.extend(stored)
    batch = data._sample_batch()
    count = round(fraction * 4)
    fresh = agent.reanalyze(batch[:count])
    torch.testing.assert_close(batch["policy_target"][:count], fresh)
    replay, length = data.replay.episodes(), batch.shape[1]

    def slot(row: int) -> int:  # sampling is with replacement: find the stored episode a row came from
        return next(i for i in range(5) if torch.equal(replay["observation"][i, :length], batch["observation"][row]))

    refreshed = {slot(row): row for row in range(count)}
    for index in range(5):
        stored_now = replay["policy_target"][index, :length]
        if index in refreshed:
            torch.testing.assert_close(stored_now, fresh[refreshed[index]], msg=f"slot {index} not written back")
        else:
            assert torch.equal(stored_now, stored["policy_target"][index, :length]), f"slot {index} changed"
    assert data.reanalysed_steps == int(batch["mask"][:count].sum())


def test_reanalyze_is_off_by_default_and_refuses_a_bad_fraction():
    assert EmotionDataModule(ENV, num_envs=1).reanalyze_fraction == 0.0
    with pytest.raises(ValueError, match="reanalyze_fraction"):
        EmotionDataModule(ENV, num_envs=1, reanalyze_fraction=1.5)
