"""The novelty bonus of each stored step (beyond the specification; docs/data.md, "Novelty"): the model's surprise,
optionally standardised by its running statistics and clipped, times a weight that may decay over env steps."""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium.wrappers.utils import RunningMeanStd

__all__ = ["NoveltyBonus"]


class NoveltyBonus:
    """``bonus_t = weight(env_steps) * f(n_t)``, added to the reward of step ``t`` in every value target.

    ``n_t`` is the model's surprise at step ``t`` (:func:`~emotion_rl.data.episodes.surprise`, measured when the
    step was collected). ``f`` is the identity, or with ``normalize`` the surprise standardised by the running mean
    and variance of every surprise stored so far and clipped to ``[-clip, clip]``: ``clip((n - mean) / sqrt(var +
    1e-8))``, the normalisation SB3's ``VecNormalize`` and RND apply (gymnasium's ``RunningMeanStd``, updated with
    each stored episode's surprises before they are scaled). Why: a raw squared error grows with the observation's
    range (Acrobot's angular velocities reach 4 pi and 9 pi), so a fixed weight that suits one environment swamps
    the reward scale of another; the standardised bonus is in units of the surprise's own spread. The weight is
    ``weight`` throughout, or with ``decay_frames > 0`` falls linearly to 0 over the first ``decay_frames`` env
    steps (a standardised bonus does not fade as the dynamics heads learn; the decay ends the exploration).

    Args:
        weight: the bonus's weight (0: no bonus, the returns of spec 2.2.2).
        decay_frames: env steps over which the weight falls linearly to 0; 0: constant.
        normalize: standardise the surprise by its running statistics and clip it.
        clip: the bound of the standardised surprise (with ``normalize``).
    """

    EPSILON = 1e-8
    """Added to the running variance before the square root (SB3's ``VecNormalize``)."""

    def __init__(self, weight: float = 0.0, decay_frames: int = 0, normalize: bool = False, clip: float = 5.0) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"novelty_weight must be a number >= 0, got {weight!r}")
        if isinstance(decay_frames, bool) or not isinstance(decay_frames, int) or decay_frames < 0:
            raise ValueError(f"novelty_decay_frames must be an integer >= 0 (0: no decay), got {decay_frames!r}")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0 or not math.isfinite(clip):
            raise ValueError(f"novelty_clip must be a finite number > 0, got {clip!r}")
        self.weight, self.decay_frames = float(weight), int(decay_frames)
        self.normalize, self.clip = bool(normalize), float(clip)
        self.statistics = RunningMeanStd(shape=())

    def weight_at(self, env_steps: int) -> float:
        """The weight after ``env_steps`` collected env steps."""
        if not self.decay_frames:
            return self.weight
        return self.weight * max(0.0, 1.0 - env_steps / self.decay_frames)

    def __call__(self, surprise: torch.Tensor, measured: torch.Tensor, env_steps: int = 0) -> torch.Tensor:
        """The bonus of each step ``[L]`` (float32, 0 where ``measured`` is False: no prediction) from its surprise
        ``[L]``; with ``normalize`` the running statistics first take in the measured surprises."""
        weight = self.weight_at(env_steps)
        if not weight:
            return torch.zeros(surprise.shape, dtype=torch.float32)
        values = surprise.detach().to("cpu", torch.float64)
        measured = measured.to("cpu", torch.bool)
        if self.normalize:
            if measured.any():
                self.statistics.update(values[measured].numpy())
            std = math.sqrt(float(self.statistics.var) + self.EPSILON)
            values = ((values - float(self.statistics.mean)) / std).clamp(-self.clip, self.clip)
        return torch.where(measured, weight * values, 0.0).to(torch.float32)

    def state_dict(self) -> dict[str, float]:
        """The running statistics (plain floats: loads with ``torch.load(weights_only=True)``)."""
        stats = self.statistics
        return {"mean": float(stats.mean), "var": float(stats.var), "count": float(stats.count)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.statistics.mean = np.float64(state["mean"])
        self.statistics.var = np.float64(state["var"])
        self.statistics.count = float(state["count"])
