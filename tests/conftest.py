"""Shared fixtures: tiny models and synthetic histories/episodes, all seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import testing
from emotion_rl.model import EmotionModel

torch.set_num_threads(1)  # tiny models: one thread is faster and timing-independent of other processes

OBS_DIM, N_ACTIONS, N_EMOTIONS = 4, 3, 8

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "cartpole.yaml")
"""The shipped config, which the CLI tests run with :data:`TINY` overrides."""
TINY = [
    "--model.d_model=16",
    "--model.n_layers=1",
    "--model.n_heads=2",
    "--model.planner.init_args.num_simulations=3",
    "--data.num_envs=2",
    "--data.frames_per_batch=16",
    "--data.batch_size=2",
    "--data.warmup_episodes=2",
    "--data.val_episodes=2",
    "--data.time_limit=40",
]
"""Command-line overrides that shrink the shipped config to a run of seconds (tiny model, short episodes)."""


def random_history(batch: int, length: int, obs_dim: int = OBS_DIM, n_actions: int = N_ACTIONS, seed: int = 0):
    """A real history ``[batch, length]`` in the public layout (entry i: s_i, a_i, e_i, r_i), float64."""
    return testing.random_history(batch, length, obs_dim, n_actions, seed=seed, n_emotions=N_EMOTIONS)


def random_episodes(lengths: list[int], max_len: int, seed: int = 0, dtype=torch.float32) -> TensorDict:
    """Right-padded episodes as the datamodule yields them (the training batch's ``episodes``)."""
    return testing.random_episodes(lengths, max_len, seed, dtype, OBS_DIM, N_ACTIONS, N_EMOTIONS)


@pytest.fixture
def tiny_model() -> EmotionModel:
    torch.manual_seed(0)
    return EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=2, n_heads=2, context_window=63).double()
