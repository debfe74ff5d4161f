"""How much training each collection buys (decision 16; docs/data.md, "Replay ratio"): a fixed number of training
batches per collection, or the number a replay ratio asks for."""

from __future__ import annotations

import math

__all__ = ["UpdateRate"]


class UpdateRate:
    """Training batches per collection of ``frames`` env steps: ``updates_per_collection``, or with ``replay_ratio``
    the count that trains that many step-samples per collected env step, ``replay_ratio * frames / (batch_size *
    window)``, which may be fractional.

    The replay ratio (trained step-samples per collected env step) is the usual measure of how hard a replay-based
    agent reuses its data; with windows of ``window`` steps a batch holds ``batch_size * window`` step-samples (fewer
    where a window is cut by its episode's start: the effective ratio, logged as ``replay/ratio``, is measured). A
    fractional rate is carried from one collection to the next (the self-play stream keeps the carry in its counters,
    saved in checkpoints): 0.5 trains one batch every other collection.

    Args:
        updates_per_collection: batches per collection; ``None``: 4, or what ``replay_ratio`` asks for.
        replay_ratio: trained step-samples per collected env step (> 0); needs ``window``. Given together with
            ``updates_per_collection``, the two must agree.
        frames: env steps per collection (``frames_per_batch`` rounded up to a multiple of ``num_envs``).
        batch_size: windows (or episodes) per batch.
        window: the context window ``K``; ``None``: whole episodes (no fixed step count per batch).
    """

    DEFAULT = 4
    """Batches per collection when neither setting is given."""

    def __init__(
        self,
        updates_per_collection: int | None,
        replay_ratio: float | None,
        frames: int,
        batch_size: int,
        window: int | None,
    ) -> None:
        given = updates_per_collection is not None
        if given and (
            isinstance(updates_per_collection, bool)
            or not isinstance(updates_per_collection, int)
            or updates_per_collection < 1
        ):
            raise ValueError(f"updates_per_collection must be an integer >= 1 or null, got {updates_per_collection!r}")
        self.step_samples = None if window is None else batch_size * window  # per batch
        self.frames = frames
        if replay_ratio is None:
            self.per_collection: float = updates_per_collection if given else self.DEFAULT
            return
        if isinstance(replay_ratio, bool) or not isinstance(replay_ratio, (int, float)) or not replay_ratio > 0:
            raise ValueError(f"replay_ratio must be a number > 0, got {replay_ratio!r}")
        if window is None:
            raise ValueError(
                "replay_ratio needs windows (context_window: K): with whole episodes a batch has no fixed number of "
                "steps; set updates_per_collection instead"
            )
        rate = replay_ratio * frames / self.step_samples
        if given and not math.isclose(rate, updates_per_collection, rel_tol=1e-9):
            updates = updates_per_collection
            raise ValueError(
                f"replay_ratio={replay_ratio} asks for {rate:g} batches per collection ({replay_ratio} x {frames} env "
                f"steps / ({batch_size} x {window} steps per batch)) but updates_per_collection={updates} gives "
                f"{self.ratio_of(updates):g}; give one of them (updates_per_collection: null with replay_ratio)"
            )
        self.per_collection = updates_per_collection if given else rate

    def ratio_of(self, updates: float) -> float | None:
        """The nominal replay ratio of ``updates`` batches per collection (``None`` with whole episodes)."""
        return None if self.step_samples is None else updates * self.step_samples / self.frames

    @property
    def ratio(self) -> float | None:
        """The nominal replay ratio: full windows' step-samples per collected env step."""
        return self.ratio_of(self.per_collection)
