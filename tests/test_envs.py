"""Environments: the previous-reward transform, batched env transitions, probing (decision 12)."""

from __future__ import annotations

import pytest
import torch
from torchrl.envs import Compose, GymEnv, InitTracker, TransformedEnv

from emotion_rl.envs import PreviousReward, make_env, probe_env

from fakes import COUNTER_ID, IMAGE_ID, UNBOUNDED_ID


def test_previous_reward_carries_the_last_reward_to_the_next_root_and_zero_after_reset():
    env = make_env(COUNTER_ID, num_envs=3, seed=0)
    assert "prev_reward" in env.observation_spec.keys()
    td = env.rollout(40, break_when_any_done=False)
    is_init = td["is_init"][..., 0]
    prev_reward, reward = td["prev_reward"][..., 0], td["next", "reward"][..., 0]
    assert is_init[:, 1:].any(), "the rollout must contain partial resets"
    assert (prev_reward[is_init] == 0).all()
    following = ~is_init[:, 1:]
    assert torch.equal(prev_reward[:, 1:][following], reward[:, :-1][following])
    assert reward.unique().numel() > 3  # the counter env's rewards differ from step to step


def test_previous_reward_on_a_plain_gym_env():
    env = TransformedEnv(GymEnv(COUNTER_ID), Compose(InitTracker(), PreviousReward()))
    env.set_seed(1)
    td = env.rollout(20, break_when_any_done=False)
    is_init = td["is_init"][:, 0]
    assert is_init[1:].any() and (td["prev_reward"][is_init] == 0).all()
    following = ~is_init[1:]
    assert torch.equal(td["prev_reward"][1:][following], td["next", "reward"][:-1][following])
    assert (td["prev_reward"][1:][following] != 0).all()


def test_make_env_transitions_are_consistent_for_batched_cartpole():
    env = make_env("CartPole-v1", num_envs=3, seed=0)
    td = env.rollout(120, break_when_any_done=False)
    done = td["next", "done"][..., 0]
    assert done[:, :-1].any()
    following = ~done[:, :-1]
    assert torch.equal(td["next", "observation"][:, :-1][following], td["observation"][:, 1:][following])
    assert (td["next", "reward"] == 1).all()  # no fake zero-reward step after an autoreset
    starts = td["observation"][td["is_init"][..., 0]]
    assert (starts.abs() <= 0.05).all()  # every episode starts in CartPole's reset range
    assert (td["next", "observation"][done].abs().sum(-1) > 0).all()  # real terminal observations, not fillers


def test_make_env_seeding_is_deterministic():
    first = make_env("CartPole-v1", num_envs=2, seed=3).reset()["observation"]
    again = make_env("CartPole-v1", num_envs=2, seed=3).reset()["observation"]
    other = make_env("CartPole-v1", num_envs=2, seed=4).reset()["observation"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])


def test_make_env_refuses_unsupported_spaces_naming_the_env():
    with pytest.raises(ValueError, match=r"Pendulum-v1.*Box.*Discrete"):
        make_env("Pendulum-v1")
    with pytest.raises(ValueError, match=r"Image-v0.*1-D continuous Box"):
        make_env(IMAGE_ID)
    with pytest.raises(ValueError, match="unknown gymnasium env id"):
        make_env("NoSuchEnv-v0")


def test_probe_env_reports_sizes_and_the_episode_limit():
    info = probe_env("CartPole-v1")
    assert (info.obs_dim, info.n_actions, info.max_episode_steps) == (4, 2, 500)
    assert probe_env("CartPole-v1", max_episode_steps=50).max_episode_steps == 50
    with pytest.raises(ValueError, match=r"Unbounded-v0.*max_episode_steps"):
        probe_env(UNBOUNDED_ID)
    assert probe_env(UNBOUNDED_ID, max_episode_steps=9).max_episode_steps == 9


def test_max_episode_steps_override_truncates_the_episodes():
    env = make_env("CartPole-v1", num_envs=1, seed=0, max_episode_steps=5)
    td = env.rollout(12, lambda td: td.set("action", torch.tensor([[1, 0]])), break_when_any_done=False)
    assert td["step_count"][..., 0].max() <= 4
    assert td["next", "truncated"].any()
