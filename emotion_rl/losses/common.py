"""What the four phase losses share (spec 2.2): the loss-module base, weighted means, the frozen critic, and the
imagined tokens that follow each real step (spec 1.5)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.objectives import LossModule

from emotion_rl.history import HISTORY_KEYS
from emotion_rl.model import EmotionModel, Encoding

__all__ = [
    "PhaseLoss",
    "frozen",
    "imagined_next",
    "masked_mean",
    "step_weight",
    "target_rewards",
    "terminated_steps",
]


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Use ``module``'s parameters as constants inside the block: gradients still flow through to its inputs."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def masked_mean(per_step: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean of ``per_step`` ``[B, L]``: ``sum(w * x) / max(sum(w), 1)`` (``weight`` bool or float)."""
    weight = weight.to(per_step.dtype)
    return (per_step * weight).sum() / weight.sum().clamp(min=1)


def step_weight(batch: TensorDictBase) -> Tensor:
    """Which steps count, ``[B, L]``: the batch's ``weight`` when present, else its ``mask``."""
    return batch.get("weight") if "weight" in batch.keys() else batch.get("mask")


def imagined_next(model: EmotionModel, encoding: Encoding, *observations: Tensor) -> list[Tensor]:
    """Hidden states ``[B, L, d]`` of imagined tokens ``(none, none, 0, s)`` that follow each step ``t``: position
    ``t + 1``, seeing the real steps ``0..t`` (spec 1.5, decision 5). One stream for every ``observations[i]``
    ``[B, L, obs]`` (``s`` for step ``t`` at ``[:, t]``), in one pass."""
    batch, length = encoding.hidden.shape[:2]
    steps = torch.arange(length, device=encoding.hidden.device)
    count = len(observations)
    visible = (steps.view(1, -1) <= steps.view(-1, 1)).expand(batch, length, length)  # real 0..t
    positions = (steps + 1).expand(batch, length)
    if count > 1:
        visible, positions = visible.repeat(1, count, 1), positions.repeat(1, count)
    hidden = model.encode_imagined(encoding, torch.cat(observations, dim=1), positions, visible)
    return list(hidden.split(length, dim=1))


def target_rewards(batch: TensorDictBase) -> Tensor:
    """The reward every value target reads, ``[B, L]``: the env's ``reward`` plus the step's ``novelty`` bonus when
    the batch has one (docs/data.md, "Novelty"). The one place the bonus joins the reward, so the Monte Carlo returns
    (whose stored ``return`` already holds it) and their row-end bootstrap agree. The model's tokens keep the env's
    reward."""
    reward = batch.get("reward")
    return reward + batch.get("novelty") if "novelty" in batch.keys() else reward


def terminated_steps(batch: TensorDictBase) -> Tensor:
    """Where an episode terminated (no value after it), ``[B, L]``: ``terminated`` when the batch has it, else
    ``done`` (every episode end then counts as a termination)."""
    return batch.get("terminated") if "terminated" in batch.keys() else batch.get("done")


class PhaseLoss(LossModule):
    """One phase's loss: TensorDict ``[B, L]`` in, TensorDict ``[]`` out (``loss_<name>`` plus diagnostics).

    Subclasses implement :meth:`per_step`: a TensorDict ``[B, L]`` whose ``loss`` entry is the per-step loss and
    whose other entries are per-step diagnostics; :meth:`forward` reduces each with :func:`masked_mean`.

    ``encoding``: the batch already encoded by the model (:meth:`EmotionModel.encode`), when a caller shares one
    forward between phases whose parameters did not change in between (docs/performance.md); ``None`` encodes
    afresh. A phase that stops gradients at ``h_t`` detaches what it is given.

    A loss may learn outputs of its own (a module on ``h_t``, :meth:`own_heads`):
    the agent trains them with the phase's optimizer, at the head learning rate, and saves them with the model.
    """

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()  # batch keys read besides the history fields and the step weight
    diagnostics: ClassVar[tuple[str, ...]] = ()  # out keys besides loss_<name>

    def __init__(self, model: EmotionModel) -> None:
        super().__init__()
        self.model = model

    @property
    def in_keys(self) -> list[str]:
        return [*HISTORY_KEYS, "mask", *self.reads, "weight"]

    @property
    def out_keys(self) -> list[str]:
        return [f"loss_{self.name}", *self.diagnostics]

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        """Per-step ``loss`` and diagnostics, TensorDict ``[B, L]``."""
        raise NotImplementedError

    def own_heads(self) -> torch.nn.Module | None:
        """The outputs this loss learns of its own, beside the model's heads (None: none)."""
        return None

    def encode(self, batch: TensorDictBase, encoding: Encoding | None) -> Encoding:
        """``encoding`` when given, else the model's encoding of ``batch`` (with gradients)."""
        return self.model.encode(batch) if encoding is None else encoding

    def forward(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        per_step, weight = self.per_step(batch, encoding), step_weight(batch)
        out = {key: masked_mean(value, weight) for key, value in per_step.items()}
        out[f"loss_{self.name}"] = out.pop("loss")
        return TensorDict(out)
