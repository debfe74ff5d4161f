"""Shared fixtures: tiny models and synthetic histories/episodes, all seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from emotion_rl.model import EmotionModel

torch.set_num_threads(1)  # tiny models: one thread is faster and timing-independent of other processes

OBS_DIM, N_ACTIONS, N_EMOTIONS = 4, 3, 8

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "cartpole.yaml")
"""The shipped config, which the CLI tests run with :data:`TINY` overrides."""
TINY = [
    "--model.d_model=16",
    "--model.n_layers=1",
    "--model.n_heads=2",
    "--model.num_simulations=3",
    "--data.num_envs=2",
    "--data.frames_per_batch=16",
    "--data.batch_size=2",
    "--data.warmup_episodes=2",
    "--data.val_episodes=2",
    "--data.time_limit=40",
]
"""Command-line overrides that shrink the shipped config to a run of seconds (tiny model, short episodes)."""


def random_history(batch: int, length: int, obs_dim: int = OBS_DIM, n_actions: int = N_ACTIONS, seed: int = 0):
    """A real history ``[batch, length]`` in the public layout (entry i: s_i, a_i, e_i, r_i)."""
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        observation=torch.randn(batch, length, obs_dim, generator=g, dtype=torch.float64),
        action=torch.randint(0, n_actions, (batch, length), generator=g),
        emotion=torch.randint(0, N_EMOTIONS, (batch, length), generator=g),
        reward=torch.randn(batch, length, generator=g, dtype=torch.float64),
        batch_size=[batch, length],
    )


def random_episodes(lengths: list[int], max_len: int, seed: int = 0, dtype=torch.float32) -> TensorDict:
    """Right-padded episodes as the datamodule yields them (DESIGN: training batch)."""
    g = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    mask = torch.arange(max_len).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    visits = torch.rand(batch, max_len, N_EMOTIONS, generator=g, dtype=dtype)
    episodes = TensorDict(
        observation=torch.randn(batch, max_len, OBS_DIM, generator=g, dtype=dtype),
        next_observation=torch.randn(batch, max_len, OBS_DIM, generator=g, dtype=dtype),
        action=torch.randint(0, N_ACTIONS, (batch, max_len), generator=g),
        emotion=torch.randint(0, N_EMOTIONS, (batch, max_len), generator=g),
        reward=torch.ones(batch, max_len, dtype=dtype),
        done=torch.zeros(batch, max_len, dtype=torch.bool),
        terminated=torch.zeros(batch, max_len, dtype=torch.bool),
        truncated=torch.zeros(batch, max_len, dtype=torch.bool),
        visit_distribution=visits / visits.sum(-1, keepdim=True),
        mask=mask,
        batch_size=[batch, max_len],
    )
    episodes["return"] = torch.randn(batch, max_len, generator=g, dtype=dtype) * 3
    return episodes.masked_fill(~mask, 0)


@pytest.fixture
def tiny_model() -> EmotionModel:
    torch.manual_seed(0)
    return EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=2, n_heads=2, context_length=64).double()
