"""Replay of whole episodes, sampled as whole episodes or as context windows (spec 1.3, 5 step 8; decision 15)."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from emotion_rl.history import EPISODE_KEYS, window_index

__all__ = ["WINDOW_WEIGHTINGS", "EpisodeReplay"]

WINDOW_WEIGHTINGS = ("end", "uniform")
"""How steps of windowed batches are weighted: ``"end"`` (every valid step 1), ``"uniform"`` (a ``weight`` key)."""


class EpisodeReplay:
    """FIFO replay of whole episodes: ``TensorDictReplayBuffer(LazyTensorStorage(capacity_episodes))``.

    Whole episodes, because ``h_t`` reads the episode from step 0 (spec 1.3); windows (:meth:`sample_windows`) are
    cut from them. Sampling draws from the buffer's generator and :attr:`window_rng`, both in :meth:`state_dict`.
    """

    def __init__(self, capacity_episodes: int, generator: torch.Generator | None = None) -> None:
        if int(capacity_episodes) < 1:
            raise ValueError(f"EpisodeReplay: capacity_episodes must be >= 1, got {capacity_episodes}")
        self.capacity = int(capacity_episodes)
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(self.capacity), generator=generator)
        self.window_rng = torch.Generator()  # end steps of sample_windows

    def __len__(self) -> int:
        return len(self.buffer)

    def seed(self, seed: int) -> None:
        """Sample from fresh generators seeded with ``seed`` from now on."""
        self.buffer.set_rng(torch.Generator().manual_seed(int(seed)))
        self.window_rng.manual_seed(int(seed) + 1)

    def extend(self, episodes: TensorDictBase) -> None:
        """Add ``[K, max_len]`` episodes (the oldest are overwritten once the buffer is full)."""
        self.buffer.extend(episodes.select(*EPISODE_KEYS).clone())

    def sample(self, batch_size: int, trim: bool = True, with_index: bool = False) -> TensorDict:
        """``[B, L]`` episodes drawn uniformly with replacement, cut to the longest valid one (``trim``);
        ``with_index``: ``{"episodes", "index"}``, with their storage slots for :meth:`refresh`."""
        if len(self) == 0:
            raise RuntimeError("EpisodeReplay.sample: the replay buffer is empty")
        sampled = self.buffer.sample(batch_size)
        batch = sampled.select(*EPISODE_KEYS)
        if trim:
            longest = max(int(batch.get("mask").sum(-1).max()), 1)
            batch = batch[:, :longest].clone()
        if with_index:
            index = sampled.get("index")  # repeated along each episode's steps: [B, max_len]
            return TensorDict({"episodes": batch, "index": index[:, 0]}, batch_size=[batch.shape[0]])
        return batch

    def sample_windows(self, batch_size: int, window: int, weighting: str = "end") -> TensorDict:
        """``[B, <= window]`` windows: ``B`` end steps ``t`` drawn uniformly among all stored steps (with
        replacement), each with the window ending there (:func:`~emotion_rl.history.window_index`: left-aligned,
        ``mask`` False after ``t``). A window is the history the windowed policy planned on at ``t``.

        ``weighting="uniform"`` adds ``weight`` float ``[B, L]``: ``window / min(window, length - s)`` at step ``s``
        of an episode of ``length`` steps (0 where ``mask`` is False), so that every stored step has the same
        expected loss weight; ``"end"`` (default) adds nothing (docs/data.md, "Window weighting")."""
        if weighting not in WINDOW_WEIGHTINGS:
            raise ValueError(f"EpisodeReplay: weighting must be one of {WINDOW_WEIGHTINGS}, got {weighting!r}")
        if len(self) == 0:
            raise RuntimeError("EpisodeReplay.sample_windows: the replay buffer is empty")
        stored = self.buffer[: len(self)]
        lengths = stored.get("mask").sum(-1)
        index = torch.multinomial(lengths.double(), batch_size, replacement=True, generator=self.window_rng)
        lengths = lengths[index]
        end = (torch.rand(batch_size, generator=self.window_rng) * lengths).long().clamp(max=lengths - 1)
        steps, valid = window_index(end, window, stored.shape[1])
        windows = stored.select(*EPISODE_KEYS)[index.unsqueeze(-1).expand_as(steps), steps]
        windows.set("mask", windows.get("mask") & valid)
        if weighting == "uniform":
            covering = (lengths.unsqueeze(-1) - steps).clamp(min=1, max=window)  # windows that hold each step
            windows.set("weight", torch.where(windows.get("mask"), window / covering.float(), 0.0))
        longest = max(int(windows.get("mask").sum(-1).max()), 1)
        return windows[:, :longest].clone()

    def refresh(self, index: torch.Tensor, key: str, values: torch.Tensor) -> None:
        """Overwrite ``key`` of the stored episodes at ``index`` on their first ``values.shape[1]`` steps."""
        stored = self.buffer[index]
        stored.get(key)[:, : values.shape[1]] = values.to(stored.get(key).dtype)
        self.buffer[index] = stored

    def state_dict(self) -> dict:
        """Contents, write cursor and both generators; loads with ``torch.load(weights_only=True)``."""
        return {**self.buffer.state_dict(), "window_rng": self.window_rng.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        window_rng = state_dict.pop("window_rng", None)
        if window_rng is not None:
            self.window_rng.set_state(window_rng)
        self.buffer.load_state_dict(state_dict)
