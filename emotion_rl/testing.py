"""Seeded synthetic data in the package's layouts, shared by the tests and the benchmarks.

Nothing here is used by training; it only builds inputs of the right shapes (:mod:`emotion_rl.history`): real
histories (``HISTORY_KEYS``), right-padded episodes (``EPISODE_KEYS``) and the training stream's batch.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["random_episodes", "random_history", "training_batch"]


def random_history(
    batch: int,
    length: int,
    obs_dim: int = 4,
    n_actions: int = 3,
    seed: int = 0,
    n_emotions: int = 8,
    dtype: torch.dtype = torch.float64,
) -> TensorDict:
    """A real history ``[batch, length]`` (entry i: s_i, a_i, e_i, r_i), every entry valid."""
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        observation=torch.randn(batch, length, obs_dim, generator=g, dtype=dtype),
        action=torch.randint(0, n_actions, (batch, length), generator=g),
        emotion=torch.randint(0, n_emotions, (batch, length), generator=g),
        reward=torch.randn(batch, length, generator=g, dtype=dtype),
        batch_size=[batch, length],
    )


def random_episodes(
    lengths: list[int],
    max_len: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    obs_dim: int = 4,
    n_actions: int = 3,
    n_emotions: int = 8,
) -> TensorDict:
    """Episodes of ``lengths`` right-padded to ``max_len`` as the datamodule yields them, ``[B, max_len]``:
    rewards 1, no novelty bonus or bootstrap, random returns, a normalised random ``policy_target``, zeros past each
    episode's end."""
    g = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    mask = torch.arange(max_len).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    visits = torch.rand(batch, max_len, n_emotions, generator=g, dtype=dtype)
    episodes = TensorDict(
        observation=torch.randn(batch, max_len, obs_dim, generator=g, dtype=dtype),
        next_observation=torch.randn(batch, max_len, obs_dim, generator=g, dtype=dtype),
        action=torch.randint(0, n_actions, (batch, max_len), generator=g),
        emotion=torch.randint(0, n_emotions, (batch, max_len), generator=g),
        reward=torch.ones(batch, max_len, dtype=dtype),
        done=torch.zeros(batch, max_len, dtype=torch.bool),
        terminated=torch.zeros(batch, max_len, dtype=torch.bool),
        truncated=torch.zeros(batch, max_len, dtype=torch.bool),
        policy_target=visits / visits.sum(-1, keepdim=True),
        novelty=torch.zeros(batch, max_len, dtype=dtype),
        bootstrap=torch.zeros(batch, max_len, dtype=dtype),
        mask=mask,
        batch_size=[batch, max_len],
    )
    episodes["return"] = torch.randn(batch, max_len, generator=g, dtype=dtype) * 3
    return episodes.masked_fill(~mask, 0)


def training_batch(episodes: TensorDict, env_steps: int = 0, n_episodes: int | None = None) -> TensorDict:
    """The training stream's batch around ``episodes`` ``[B, L]``: ``{episodes, stats}``, with collection stats
    that log nothing surprising (uniform emotion usage, no finished episode's return, temperature 1)."""
    n_emotions = episodes["policy_target"].shape[-1]
    stats = TensorDict(
        env_steps=torch.tensor(env_steps),
        episodes=torch.tensor(episodes.shape[0] if n_episodes is None else n_episodes),
        episode_return=torch.tensor(float("nan")),
        emotion_usage=torch.full((n_emotions,), 1 / n_emotions),
        temperature=torch.tensor(1.0),
    )
    return TensorDict(episodes=episodes, stats=stats)
