"""Emotion selection (spec 3.4): the temperature schedule and the draw of an emotion from a search's distribution."""

from __future__ import annotations

import math

import torch

__all__ = ["TemperatureSchedule", "draw_device", "select_emotion"]


class TemperatureSchedule:
    """Emotion sampling temperature (spec 3.4): linear from ``start`` to ``end`` over the first ``decay_frames``
    env steps, then ``end`` (the spec's 1.0 and 0.1 by default; ``decay_frames=0``: ``end`` throughout; 0: argmax).
    """

    def __init__(self, start: float = 1.0, end: float = 0.1, decay_frames: int = 20_000) -> None:
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TemperatureSchedule: {name} must be a finite number >= 0, got {value!r}")
        if isinstance(decay_frames, bool) or not isinstance(decay_frames, int) or decay_frames < 0:
            raise ValueError(f"TemperatureSchedule: decay_frames must be an integer >= 0, got {decay_frames!r}")
        self.start = float(start)
        self.end = float(end)
        self.decay_frames = int(decay_frames)

    def __call__(self, frames: int | torch.Tensor) -> float:
        """The temperature after ``frames`` environment steps."""
        frames = int(frames)
        if self.decay_frames == 0 or frames >= self.decay_frames:
            return self.end
        fraction = max(frames, 0) / self.decay_frames
        return self.start + (self.end - self.start) * fraction

    def __repr__(self) -> str:
        return f"TemperatureSchedule(start={self.start}, end={self.end}, decay_frames={self.decay_frames})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TemperatureSchedule):
            return NotImplemented
        return (self.start, self.end, self.decay_frames) == (other.start, other.end, other.decay_frames)


def select_emotion(
    visit_distribution: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One emotion per row of ``visit_distribution`` ``[*B, E]`` (spec 3.4), long ``[*B]`` on its device (drawn on
    ``generator``'s device, which may differ).

    ``temperature == 0``: argmax, ties to the lowest index. Otherwise a draw from ``dist ** (1 / T)`` normalised,
    computed as ``softmax((log dist - log max dist) / T)`` (no overflow for tiny ``T``); zero-visit emotions keep
    probability 0; rows need not be normalised.
    """
    if isinstance(temperature, torch.Tensor):
        temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"select_emotion: temperature must be a finite number >= 0, got {temperature!r}")
    if visit_distribution.ndim < 1 or visit_distribution.shape[-1] == 0:
        raise ValueError(
            "select_emotion: visit_distribution must have shape [*B, E] with E >= 1, "
            f"got {tuple(visit_distribution.shape)}"
        )
    dist = visit_distribution.detach().to(torch.float64)
    batch_shape = dist.shape[:-1]
    flat = dist.reshape(-1, dist.shape[-1])
    if flat.numel() and (not torch.isfinite(flat).all() or (flat < 0).any() or (flat.sum(-1) <= 0).any()):
        raise ValueError(
            "select_emotion: every row of visit_distribution must be finite, non-negative and have a positive sum"
        )
    if temperature == 0:
        # torch.argmax returns the first maximal index: ties go to the lowest emotion index.
        return flat.argmax(-1).reshape(batch_shape)
    log_dist = flat.log()  # log 0 = -inf: zero-visit emotions keep probability 0
    logits = (log_dist - log_dist.max(-1, keepdim=True).values) / temperature
    # drawn where the generator lives (a CPU generator, e.g. the datamodule's, with a model on an accelerator)
    probs = logits.softmax(-1).to(draw_device(generator, logits))
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return choice.reshape(batch_shape).to(dist.device)


def draw_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Where a draw from ``generator`` must happen: its own device (``torch.multinomial`` refuses a generator on
    another device than its input), or ``like``'s when drawing from the global RNG."""
    return like.device if generator is None else generator.device
