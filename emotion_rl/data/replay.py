"""Replay of whole episodes as a flat storage of steps, sampled as whole episodes or as context windows
(spec 1.3, 5 step 8; decision 15)."""

from __future__ import annotations

from collections import deque

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer

from emotion_rl.history import EPISODE_KEYS

__all__ = ["WINDOW_WEIGHTINGS", "EpisodeReplay"]

WINDOW_WEIGHTINGS = ("end", "uniform")
"""How steps of windowed batches are weighted: ``"end"`` (every valid step 1), ``"uniform"`` (a ``weight`` key)."""

STORED_KEYS = tuple(key for key in EPISODE_KEYS if key != "mask") + ("episode", "step")
"""A stored step: the episode keys (``mask`` is implied) plus the episode id (the trajectory key) and its step."""


class _EpisodeSlices(SliceSampler):
    """TorchRL's ``SliceSampler`` over the stored episodes (trajectory key ``episode``), drawing only among the
    episodes the replay keeps (ids from ``replay.oldest_episode`` on), uniformly or in proportion to their length,
    and always padding slices to ``slice_len`` (``("collector", "mask")`` marks the real steps). ``last_lengths``:
    the drawn episodes' lengths."""

    def __init__(self, replay: EpisodeReplay, slice_len: int, windows: bool) -> None:
        super().__init__(
            slice_len=slice_len,
            traj_key="episode",
            strict_length=False,
            pad_output=True,
            truncated_key=None,
            span=(windows, False),  # windows: starts before step 0 are cut there, so the end step is uniform
        )
        self.replay = replay
        self.proportional = windows
        self.last_lengths = torch.zeros(0, dtype=torch.long)

    def _sample_slices(
        self, lengths, start_idx, stop_idx, seq_length, num_slices, storage_length, traj_idx=None, *, storage
    ):  # noqa: ANN001, ANN202, E501 - SliceSampler's hook
        episode = storage[start_idx[:, 0]].get("episode")
        valid = (episode >= self.replay.oldest_episode).nonzero().squeeze(-1)
        valid = valid[episode[valid].argsort()]  # canonical order: the draw does not depend on the storage layout
        weights = lengths[valid].double() if self.proportional else torch.ones(valid.numel(), dtype=torch.float64)
        traj_idx = valid[torch.multinomial(weights, num_slices, replacement=True, generator=self._rng)]
        self.last_lengths = lengths[traj_idx]
        return super()._sample_slices(
            lengths, start_idx, stop_idx, seq_length, num_slices, storage_length, traj_idx, storage=storage
        )

    def _get_index(self, *args, target_seq_length=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return super()._get_index(*args, target_seq_length=target_seq_length or self.slice_len, **kwargs)


class EpisodeReplay:
    """FIFO replay of whole episodes, stored flat: a ``LazyTensorStorage`` of steps (``STORED_KEYS``) sampled by
    TorchRL's ``SliceSampler`` with the episode id as trajectory key. It keeps the newest ``capacity_episodes``
    episodes and, with ``capacity_steps``, no more steps than that: after each added episode the oldest whole
    episodes are evicted until both limits hold (docs/data.md, "Replay").

    Whole episodes, because ``h_t`` reads the episode from step 0 (spec 1.3); windows (:meth:`sample_windows`) are
    slices ending at a stored step. The storage holds ``(capacity_episodes + 1) * max_episode_steps`` steps, or
    ``capacity_steps + max_episode_steps`` when that is fewer (``max_episode_steps`` taken from the width of the first
    :meth:`extend` when not given); an episode never wraps around its end, and older steps are overwritten in order,
    so the episodes kept are always whole. Memory and checkpoints grow with the steps stored, not with ``capacity *
    time limit``.
    """

    def __init__(
        self,
        capacity_episodes: int,
        generator: torch.Generator | None = None,
        max_episode_steps: int | None = None,
        capacity_steps: int | None = None,
    ) -> None:
        if int(capacity_episodes) < 1:
            raise ValueError(f"EpisodeReplay: capacity_episodes must be >= 1, got {capacity_episodes}")
        self.capacity = int(capacity_episodes)
        self.capacity_steps = None if capacity_steps is None else int(capacity_steps)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self._check_capacity_steps()
        self.generator = generator if generator is not None else torch.Generator()
        self.storage: LazyTensorStorage | None = None
        self._buffers: dict[tuple[bool, int], TensorDictReplayBuffer] = {}
        self.cursor = 0  # next storage slot
        self.next_episode = 0  # id of the next episode added
        self.oldest_episode = 0  # id of the oldest episode kept (sampled)
        self._lengths: deque[int] = deque()  # lengths of the episodes kept, oldest first
        self.stored_steps = 0  # their total

    def _check_capacity_steps(self) -> None:
        """Refuse a ``capacity_steps`` that cannot hold one longest episode (its steps would be evicted at once)."""
        if self.capacity_steps is None:
            return
        longest = self.max_episode_steps or 1
        if self.capacity_steps < longest:
            raise ValueError(
                f"EpisodeReplay: capacity_steps ({self.capacity_steps}) must hold at least one whole episode of the "
                f"longest kind ({longest} steps); raise it to {longest} or more"
            )

    def __len__(self) -> int:
        return self.next_episode - self.oldest_episode

    @property
    def size(self) -> int:
        """Steps the storage holds (kept episodes and the room a new one needs)."""
        size = (self.capacity + 1) * self.max_episode_steps
        if self.capacity_steps is not None:
            size = min(size, self.capacity_steps + self.max_episode_steps)
        return size

    def seed(self, seed: int) -> None:
        """Sample from a generator seeded with ``seed`` from now on."""
        self.generator.manual_seed(int(seed))

    def _make_storage(self, template: TensorDictBase) -> None:
        """Allocate the storage from one stored step, every slot marked empty (episode -1: never sampled)."""
        size = self.size
        self.storage = LazyTensorStorage(size)
        empty = template[:1].expand(size).clone().zero_()
        empty.get("episode").fill_(-1)
        self.storage.set(torch.arange(size), empty)

    def extend(self, episodes: TensorDictBase) -> None:
        """Add ``[K, max_len]`` episodes (right-padded, ``mask`` True on the valid prefix), oldest first; after each,
        evict the oldest whole episodes until ``capacity_episodes`` and ``capacity_steps`` hold."""
        if self.max_episode_steps is None:
            self.max_episode_steps = episodes.batch_size[1]
            self._check_capacity_steps()
        size = self.size
        lengths = episodes.get("mask").sum(-1).tolist()
        for k, length in enumerate(lengths):
            if length > self.max_episode_steps:
                raise ValueError(f"EpisodeReplay: an episode of {length} steps exceeds {self.max_episode_steps}")
            if self.cursor + length > size:  # never wrap inside an episode
                self.cursor = 0
            steps = episodes[k, :length].select(*EPISODE_KEYS).exclude("mask").clone()
            steps.set("episode", torch.full((length,), self.next_episode, dtype=torch.long))
            steps.set("step", torch.arange(length))
            if self.storage is None:
                self._make_storage(steps)
            self.storage.set(torch.arange(self.cursor, self.cursor + length), steps)
            self.cursor += length
            self.next_episode += 1
            self._lengths.append(length)
            self.stored_steps += length
            self._evict()

    def _evict(self) -> None:
        """Drop the oldest episodes (their steps stay in the storage, never drawn, until overwritten) while more
        than ``capacity_episodes`` episodes or ``capacity_steps`` steps are kept."""
        steps = self.capacity_steps
        while len(self._lengths) > self.capacity or (steps is not None and self.stored_steps > steps):
            self.stored_steps -= self._lengths.popleft()
            self.oldest_episode += 1

    def _buffer(self, windows: bool, slice_len: int) -> TensorDictReplayBuffer:
        key = (windows, slice_len)
        if key not in self._buffers:
            sampler = _EpisodeSlices(self, slice_len, windows)
            self._buffers[key] = TensorDictReplayBuffer(storage=self.storage, sampler=sampler, generator=self.generator)
        return self._buffers[key]

    def _slices(self, batch_size: int, windows: bool, slice_len: int) -> tuple[TensorDict, torch.Tensor]:
        if len(self) == 0:
            raise RuntimeError("EpisodeReplay: the replay buffer is empty")
        buffer = self._buffer(windows, slice_len)
        sampled, info = buffer.sample(batch_size * slice_len, return_info=True)
        mask = info.get(("collector", "mask"))
        mask = torch.ones(sampled.batch_size, dtype=torch.bool) if mask is None else mask
        index = torch.where(mask, info["index"][0], -1)
        batch = sampled.select(*STORED_KEYS).reshape(batch_size, slice_len)
        batch.set("mask", mask.reshape(batch_size, slice_len))
        return batch, index.reshape(batch_size, slice_len)

    @staticmethod
    def _trim(batch: TensorDict, index: torch.Tensor) -> tuple[TensorDict, torch.Tensor]:
        longest = max(int(batch.get("mask").sum(-1).max()), 1)
        return batch[:, :longest].clone(), index[:, :longest].clone()

    def sample(self, batch_size: int, trim: bool = True, with_index: bool = False) -> TensorDict:
        """``[B, L]`` episodes (``EPISODE_KEYS``) drawn uniformly with replacement, right-padded to the time limit
        (``mask`` False on padding) and cut to the longest drawn (``trim``); ``with_index``: ``{"episodes",
        "index"}``, ``index`` long ``[B, L]`` the storage slot of each step (-1 on padding) for :meth:`refresh`."""
        batch, index = self._slices(batch_size, False, self.max_episode_steps or 1)
        batch = batch.select(*EPISODE_KEYS)
        for key in batch.keys():
            if key != "mask":
                value = batch.get(key)
                batch.set(key, torch.where(_expand(batch.get("mask"), value), value, value.new_zeros(())))
        if trim:
            batch, index = self._trim(batch, index)
        if with_index:
            return TensorDict({"episodes": batch, "index": index}, batch_size=[batch.shape[0]])
        return batch

    def sample_windows(self, batch_size: int, window: int, weighting: str = "end") -> TensorDict:
        """``[B, <= window]`` windows: an episode drawn in proportion to its length, then an end step ``t``
        uniformly in it (so ``t`` is uniform over all stored steps, with replacement), and the window ending there
        (``max(0, t - window + 1) .. t``, left-aligned, ``mask`` False after ``t``): the history the windowed policy
        planned on at ``t``.

        ``weighting="uniform"`` adds ``weight`` float ``[B, L]``: ``window / min(window, length - s)`` at step ``s``
        of an episode of ``length`` steps (0 where ``mask`` is False), so that every stored step has the same
        expected loss weight; ``"end"`` (default) adds nothing (docs/data.md, "Window weighting")."""
        if weighting not in WINDOW_WEIGHTINGS:
            raise ValueError(f"EpisodeReplay: weighting must be one of {WINDOW_WEIGHTINGS}, got {weighting!r}")
        batch, index = self._slices(batch_size, True, int(window))
        mask = batch.get("mask")
        if weighting == "uniform":
            lengths = self._buffer(True, int(window))._sampler.last_lengths
            covering = (lengths.unsqueeze(-1) - batch.get("step")).clamp(min=1, max=window)  # windows holding it
            batch.set("weight", torch.where(mask, window / covering.float(), 0.0))
        keys = (*EPISODE_KEYS, "weight") if weighting == "uniform" else EPISODE_KEYS
        batch, _ = self._trim(batch.select(*keys), index)
        return batch

    def refresh(self, index: torch.Tensor, key: str, values: torch.Tensor) -> None:
        """Overwrite ``key`` at the storage slots ``index`` ``[B, L]`` (from ``sample(with_index=True)``; -1
        skipped) with ``values`` ``[B, >= L, ...]``."""
        index = index[:, : values.shape[1]]
        valid = index >= 0
        slots = index[valid]
        stored = self.storage[slots]
        stored.set(key, values[:, : index.shape[1]][valid].to(stored.get(key).dtype))
        self.storage.set(slots, stored)

    def episodes(self) -> TensorDict:
        """The stored episodes, oldest first, as ``[len(self), max_episode_steps]`` (right-padded, ``mask``)."""
        if self.storage is None:
            return TensorDict({}, batch_size=[0])
        steps = self.storage[:]
        out = []
        for episode in range(self.oldest_episode, self.next_episode):
            rows = steps[steps.get("episode") == episode]
            rows = rows[rows.get("step").argsort()].select(*EPISODE_KEYS[:-1])
            rows.set("mask", torch.ones(rows.batch_size, dtype=torch.bool))
            out.append(_pad(rows, self.max_episode_steps))
        return torch.stack(out)

    def state_dict(self) -> dict:
        """The kept episodes' steps with their slots (not the stale ones), the cursor, the episode counter, the
        oldest kept episode and the generator; loads with ``torch.load(weights_only=True)``."""
        state = {
            "cursor": self.cursor,
            "next_episode": self.next_episode,
            "oldest_episode": self.oldest_episode,
            "max_episode_steps": self.max_episode_steps,
            "generator": self.generator.get_state(),
        }
        if self.storage is not None:
            steps = self.storage[:]
            keep = steps.get("episode") >= self.oldest_episode
            state["steps"] = steps[keep].to_dict()
            state["slots"] = keep.nonzero().squeeze(-1)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.cursor, self.next_episode = int(state_dict["cursor"]), int(state_dict["next_episode"])
        oldest = state_dict.get("oldest_episode", self.next_episode - self.capacity)  # older checkpoints: by count
        self.oldest_episode = max(int(oldest), 0)
        self.generator.set_state(state_dict["generator"])
        self._lengths.clear()
        self.stored_steps = 0
        self._buffers.clear()
        self.storage = None
        if state_dict.get("max_episode_steps") is not None:
            self.max_episode_steps = int(state_dict["max_episode_steps"])
        if "steps" in state_dict:
            kept = TensorDict(_upgrade(state_dict["steps"]), batch_size=[state_dict["slots"].numel()])
            self._make_storage(kept)
            self.storage.set(state_dict["slots"], kept)
            episode = kept.get("episode")
            counts = torch.bincount(episode - self.oldest_episode, minlength=len(self)).tolist()
            self._lengths.extend(counts)
            self.stored_steps = sum(counts)


RENAMED = {"visit_distribution": "policy_target"}
"""Stored keys renamed since checkpoints were first written (old name: new name); loading renames them."""
ADDED = ("novelty", "bootstrap")
"""Stored per-step floats added since checkpoints were first written; loading fills a missing one with zeros (no
novelty bonus, no bootstrap at a truncation: what those runs trained with)."""


def _upgrade(steps: dict) -> dict:
    """A checkpoint's stored steps with the keys of this version: renamed keys (:data:`RENAMED`) take their new
    name and added ones (:data:`ADDED`) are zeros, so a run saved by an earlier version resumes."""
    steps = {RENAMED.get(key, key): value for key, value in steps.items()}
    for key in ADDED:
        if key not in steps:
            steps[key] = torch.zeros_like(steps["reward"])
    return steps


def _pad(steps: TensorDict, length: int) -> TensorDict:
    pad = length - steps.batch_size[0]
    return steps.apply(lambda x: torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]), batch_size=[length])


def _expand(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return mask.reshape(*mask.shape, *([1] * (value.ndim - mask.ndim)))
