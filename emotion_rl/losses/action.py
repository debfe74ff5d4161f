"""Phase 2 (spec 2.2.4): the action heads. The literal objective, the section 4.3 objective, and the assigned
heads of the shipped config (beyond the specification)."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.losses.common import PhaseLoss, frozen, imagined_next
from emotion_rl.model import EmotionModel, Encoding

__all__ = ["ActionLoss", "AssignedActionLoss", "LiteralActionLoss", "MaxValueActionLoss"]


class ActionLoss(PhaseLoss):
    """Phase 2 (spec 2.2.4): the action heads learn through the frozen dynamics heads.

    The trainable part is shared: ``a = softmax(A^e(h_t))`` (action heads and transformer). A subclass gives the
    objective on it (:meth:`objective`, or :meth:`head_objective` for one that reads the logits of every head);
    the agent takes the class from its config (``action_loss``: class_path + init_args). Diagnostic
    ``imagined_value``: the value the objective reads.

    Args:
        model: the model whose action heads learn (given by the agent).
        update_transformer: ``False`` detaches ``h_t``: phase 2 moves the action heads only, and phase 3 may reuse
            phase 2's forward (the agent does).
    """

    name = "action"
    diagnostics = ("imagined_value",)

    def __init__(self, model: EmotionModel, update_transformer: bool = True) -> None:
        super().__init__(model)
        self.update_transformer = update_transformer

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        encoding = self.encode(batch, encoding)
        hidden = encoding.hidden if self.update_transformer else encoding.hidden.detach()
        logits = self.model.action_logits(hidden, batch["emotion"])  # the selected emotion's head, trainable
        loss, value = self.head_objective(batch, encoding, hidden, logits)
        return TensorDict(loss=loss, imagined_value=value.detach(), batch_size=batch.batch_size)

    def head_objective(
        self, batch: TensorDictBase, encoding: Encoding, hidden: Tensor, logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-step ``(loss, imagined value)`` ``[B, L]``; ``hidden`` is ``h_t`` as this phase may train it and
        ``logits`` ``[B, L, A]`` the selected emotion's head on it. By default :meth:`objective` on ``softmax``."""
        return self.objective(encoding, torch.softmax(logits, dim=-1), batch["emotion"])

    def objective(self, encoding: Encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step ``(loss, imagined value)`` ``[B, L]`` from the encoding, ``a`` ``[B, L, A]`` and ``e_t``."""
        raise NotImplementedError


class MaxValueActionLoss(ActionLoss):
    """Section 4.3 (decision 7): ``-V(Z^e(stopgrad(h_t), a))``, V the value the frozen model gives the imagined
    next state appended to the real steps ``0..t``, read as the search's leaf reads it
    (:meth:`EmotionModel.state_value`: the mean of the E values, spec 1.4).

    Args:
        model: the model whose action heads learn (given by the agent).
        update_transformer: ``False``: phase 2 moves the action heads only.
    """

    def objective(self, encoding: Encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:
        with frozen(self.model):  # the critic: dynamics, transformer, value and policy heads all held fixed
            z_pred = self.model.dynamics(encoding.hidden.detach(), action, emotion)
            (imagined,) = imagined_next(self.model, encoding.detach(), z_pred)
            value = self.model.state_value(self.model.emotion_values(imagined))
        return -value, value


class LiteralActionLoss(ActionLoss):
    """Spec 2.2.4 as written: ``MSE(Z^e(stopgrad(h), a), stopgrad(Z^e(h, a)))``, identically zero with zero
    gradient (decision 7). Kept to run the specification literally.

    Args:
        model: the model whose action heads learn (given by the agent).
        update_transformer: ``False``: phase 2 moves the action heads only.
    """

    def objective(self, encoding: Encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:
        h = encoding.hidden
        z_target = self.model.dynamics(h, action, emotion).detach()  # stopgrad(Z(h, A(h)))
        with frozen(self.model.dynamics_heads):
            z_pred = self.model.dynamics(h.detach(), action, emotion)
        loss = (z_pred - z_target).pow(2).sum(-1)
        return loss, torch.zeros_like(loss)


class AssignedActionLoss(ActionLoss):
    """A fixed assignment of actions to emotions (beyond the specification; the upper bound of coverage): every
    head, at every step, learns by cross-entropy to prefer action ``e mod A``, so the search over emotions is a
    search over actions and ``V^e`` the value of a known action. Diagnostic ``imagined_value``: 0 (nothing is
    imagined). Needs at least as many emotions as actions (refused otherwise: an action no emotion stands for
    could never be chosen).

    Args:
        model: the model whose action heads learn (given by the agent).
        update_transformer: ``False``: phase 2 moves the action heads only.
    """

    def __init__(self, model: EmotionModel, update_transformer: bool = True) -> None:
        if model.n_emotions < model.n_actions:
            raise ValueError(
                f"AssignedActionLoss gives emotion e the action e mod n_actions, so with n_emotions="
                f"{model.n_emotions} < n_actions={model.n_actions} some actions would never be taken: set "
                f"model.n_emotions to at least {model.n_actions}, or choose another action_loss"
            )
        super().__init__(model, update_transformer)

    def head_objective(
        self, batch: TensorDictBase, encoding: Encoding, hidden: Tensor, logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        log_p = torch.log_softmax(self.model.action_logits(hidden), dim=-1)  # [B, L, E, A]
        n_emotions, n_actions = log_p.shape[-2:]
        assigned = torch.arange(n_emotions, device=log_p.device) % n_actions
        loss = -log_p.gather(-1, assigned.view(n_emotions, 1).expand(*log_p.shape[:-1], 1)).squeeze(-1).mean(-1)
        return loss, torch.zeros_like(loss)
