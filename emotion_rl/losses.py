"""The four training losses (spec 2.2), one TorchRL loss module per phase (docs/training.md).

Each module holds the :class:`~emotion_rl.model.EmotionModel` and its phase's settings, reads a batch of real
histories ``[B, L]`` (``emotion_rl.history.EPISODE_KEYS``) and returns a TensorDict with its ``loss_<phase>`` (a
scalar: the weighted mean over steps) and diagnostics. The step weight is the batch's ``weight`` when present,
else its ``mask``. The stop-gradients of spec 2.2 are written at the call (``.detach()``, :func:`frozen`).
None needs :class:`~emotion_rl.agent.EmotionAgent`: any loop can ``loss(batch)["loss_value"].backward()``.

    phase 1  DynamicsLoss         ||Z^e(h, stopgrad(A^e(h))) - s_next||^2      (spec 2.2.3, decision 8)
    phase 2  MaxValueActionLoss   -V(Z^e(stopgrad(h), A^e(h))), critic frozen  (section 4.3, decision 7)
             LiteralActionLoss    MSE(Z(h, A(h)), stopgrad(Z(h, A(h)))) = 0     (spec 2.2.4, decision 7)
    phase 3  ValueLoss            (V^e(s) - return_scale * G)^2                (spec 2.2.2)
    phase 4  PolicyLoss           -sum_e pi_MCTS(e) log pi(e | s)              (spec 2.2.1)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.objectives import LossModule

from emotion_rl.model import EmotionModel

__all__ = [
    "ACTION_LOSSES",
    "ActionLoss",
    "DynamicsLoss",
    "LiteralActionLoss",
    "MaxValueActionLoss",
    "PhaseLoss",
    "PolicyLoss",
    "ValueLoss",
    "action_loss_class",
    "frozen",
    "masked_mean",
    "step_weight",
]

DynamicsAction = Literal["action_head", "taken"]


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


class PhaseLoss(LossModule):
    """One phase's loss: TensorDict ``[B, L]`` in, TensorDict ``[]`` out (``loss_<name>`` plus diagnostics).

    Subclasses implement :meth:`per_step`: a TensorDict ``[B, L]`` whose ``loss`` entry is the per-step loss and
    whose other entries are per-step diagnostics; :meth:`forward` reduces each with :func:`masked_mean`.
    """

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()  # batch keys read besides the history fields and the step weight
    diagnostics: ClassVar[tuple[str, ...]] = ()  # out keys besides loss_<name>

    def __init__(self, model: EmotionModel) -> None:
        super().__init__()
        self.model = model

    @property
    def in_keys(self) -> list[str]:
        return ["observation", "action", "emotion", "reward", "mask", *self.reads, "weight"]

    @property
    def out_keys(self) -> list[str]:
        return [f"loss_{self.name}", *self.diagnostics]

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        raise NotImplementedError

    def forward(self, batch: TensorDictBase) -> TensorDict:
        per_step, weight = self.per_step(batch), step_weight(batch)
        out = {key: masked_mean(value, weight) for key, value in per_step.items()}
        out[f"loss_{self.name}"] = out.pop("loss")
        return TensorDict(out)


class DynamicsLoss(PhaseLoss):
    """Phase 1 (spec 2.2.3): ``||Z^e(h_t, a) - s_{t+1}||^2`` for the selected emotion, e = e_t.

    ``action_input``: ``"action_head"`` (literal: ``a = stopgrad(softmax(A^e(h_t)))``) or ``"taken"`` (one-hot of
    the action taken, decision 8). Trains the dynamics heads and the transformer.
    """

    name = "dynamics"
    reads = ("next_observation",)

    def __init__(self, model: EmotionModel, action_input: DynamicsAction = "action_head") -> None:
        super().__init__(model)
        if action_input not in DynamicsAction.__args__:
            raise ValueError(f"dynamics_action={action_input!r} is not supported; choose one of action_head, taken")
        self.action_input = action_input

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        h = self.model.encode(batch).hidden
        emotion = batch["emotion"]
        if self.action_input == "action_head":
            action = torch.softmax(self.model.action_logits(h, emotion), dim=-1).detach()  # stopgrad: heads frozen
        else:
            action = F.one_hot(batch["action"].clamp(min=0), self.model.n_actions).to(h.dtype)
        z_pred = self.model.dynamics(h, action, emotion)
        return TensorDict(loss=(z_pred - batch["next_observation"]).pow(2).sum(-1), batch_size=batch.batch_size)


class ActionLoss(PhaseLoss):
    """Phase 2 (spec 2.2.4): the action heads learn through the frozen dynamics heads.

    The trainable part is shared: ``a = softmax(A^e(h_t))`` (action heads and transformer). A subclass gives the
    objective on it (:meth:`objective`); the agent picks the class by ``phase2_objective`` (a short name of
    :data:`ACTION_LOSSES` or a dotted class path). Diagnostic ``imagined_value``: the value the objective reads.
    """

    name = "action"
    diagnostics = ("imagined_value",)

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        encoding = self.model.encode(batch)
        emotion = batch["emotion"]
        action = torch.softmax(self.model.action_logits(encoding.hidden, emotion), dim=-1)  # trainable
        loss, value = self.objective(encoding, action, emotion)
        return TensorDict(loss=loss, imagined_value=value.detach(), batch_size=batch.batch_size)

    def objective(self, encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        """Per-step ``(loss, imagined value)`` ``[B, L]`` from the encoding, ``a`` ``[B, L, A]`` and ``e_t``."""
        raise NotImplementedError


class MaxValueActionLoss(ActionLoss):
    """Section 4.3 (decision 7): ``-V(Z^e(stopgrad(h_t), a))``, V the mean of the E values the frozen model gives
    the imagined next state appended to the real steps ``0..t`` (as the search's leaf reads it, spec 1.4)."""

    def objective(self, encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        h = encoding.hidden
        with frozen(self.model):  # the critic: dynamics, transformer and value heads all held fixed
            z_pred = self.model.dynamics(h.detach(), action, emotion)
            batch, length = emotion.shape
            steps = torch.arange(length, device=h.device)
            visible = (steps.view(1, -1) <= steps.view(-1, 1)).expand(batch, length, length)  # real 0..t
            positions = (steps + 1).expand(batch, length)
            imagined = self.model.encode_imagined(encoding.detach(), z_pred, positions, visible)
            value = self.model.emotion_values(imagined).mean(-1)
        return -value, value


class LiteralActionLoss(ActionLoss):
    """Spec 2.2.4 as written: ``MSE(Z^e(stopgrad(h), a), stopgrad(Z^e(h, a)))``, identically zero with zero
    gradient (decision 7). Kept to run the specification literally."""

    def objective(self, encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        h = encoding.hidden
        z_target = self.model.dynamics(h, action, emotion).detach()  # stopgrad(Z(h, A(h)))
        with frozen(self.model.dynamics_heads):
            z_pred = self.model.dynamics(h.detach(), action, emotion)
        loss = (z_pred - z_target).pow(2).sum(-1)
        return loss, torch.zeros_like(loss)


ACTION_LOSSES: dict[str, type[ActionLoss]] = {"max_value": MaxValueActionLoss, "literal": LiteralActionLoss}
"""Short names of the phase-2 objectives (``EmotionAgent(phase2_objective=...)``)."""


def action_loss_class(name: str) -> type[ActionLoss]:
    """The phase-2 loss class for ``name``: a key of :data:`ACTION_LOSSES` or a dotted path to an
    :class:`ActionLoss` subclass (``"emotion_rl.losses.LiteralActionLoss"``, ``"mypackage.MyActionLoss"``)."""
    if name in ACTION_LOSSES:
        return ACTION_LOSSES[name]
    module_name, _, attribute = name.rpartition(".")
    found = None
    if module_name:
        try:
            found = getattr(importlib.import_module(module_name), attribute, None)
        except ImportError:
            found = None
    if not (isinstance(found, type) and issubclass(found, ActionLoss)):
        raise ValueError(
            f"phase2_objective={name!r} is not supported; choose one of {list(ACTION_LOSSES)} or the dotted path "
            "of an emotion_rl.losses.ActionLoss subclass"
        )
    return found


class ValueLoss(PhaseLoss):
    """Phase 3 (spec 2.2.2): ``(V^e(s_t) - return_scale * G_t)^2`` for the selected emotion, G the actual
    discounted return (``return`` key). Trains the value heads and the transformer."""

    name = "value"
    reads = ("return",)

    def __init__(self, model: EmotionModel, return_scale: float = 1.0) -> None:
        super().__init__(model)
        if return_scale <= 0:
            raise ValueError(f"return_scale must be > 0, got {return_scale}")
        self.return_scale = return_scale

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        h = self.model.encode(batch).hidden
        value = self.model.emotion_values(h, batch["emotion"])
        loss = (value - self.return_scale * batch["return"]).pow(2)
        return TensorDict(loss=loss, batch_size=batch.batch_size)


class PolicyLoss(PhaseLoss):
    """Phase 4 (spec 2.2.1): ``-sum_e pi_MCTS(e) log pi(e | s_t)`` (log-softmax in place of ``log(p + eps)``), the
    stored search visit distribution as target (``visit_distribution`` key). Trains the policy head and the
    transformer."""

    name = "policy"
    reads = ("visit_distribution",)

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        h = self.model.encode(batch).hidden
        log_policy = torch.log_softmax(self.model.policy_logits(h), dim=-1)
        loss = -(batch["visit_distribution"] * log_policy).sum(-1)
        return TensorDict(loss=loss, batch_size=batch.batch_size)
