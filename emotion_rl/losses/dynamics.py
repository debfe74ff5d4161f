"""Phase 1 (spec 2.2.3): the dynamics heads learn the next real observation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from emotion_rl.losses.common import PhaseLoss
from emotion_rl.model import EmotionModel, Encoding

__all__ = ["DynamicsAction", "DynamicsLoss"]

DynamicsAction = Literal["action_head", "taken"]


class DynamicsLoss(PhaseLoss):
    """Phase 1 (spec 2.2.3): ``||Z^e(h_t, a) - s_{t+1}||^2`` for the selected emotion, e = e_t.

    ``action_input``: ``"action_head"`` (literal: ``a = stopgrad(softmax(A^e(h_t)))``) or ``"taken"`` (one-hot of
    the action taken, decision 8). ``all_emotions``: every emotion's head learns every transition (the mean of the
    E errors; beyond the specification). Trains the dynamics heads and the transformer.

    Args:
        model: the model whose dynamics heads learn (given by the agent).
        action_input: ``"action_head"`` (spec 2.2.3: the detached softmax of the emotion's action head) or
            ``"taken"`` (the one-hot of the action taken; decision 8).
        all_emotions: every emotion's dynamics head learns every transition, each with its own action input.
    """

    name = "dynamics"
    reads = ("next_observation",)

    def __init__(
        self, model: EmotionModel, action_input: DynamicsAction = "action_head", all_emotions: bool = False
    ) -> None:
        super().__init__(model)
        if action_input not in DynamicsAction.__args__:
            raise ValueError(f"action_input={action_input!r} is not supported; choose one of action_head, taken")
        self.action_input, self.all_emotions = action_input, all_emotions

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        h = self.encode(batch, encoding).hidden
        emotion = batch["emotion"]
        if self.all_emotions:  # every head, its own action input: [B, L, E, obs]
            if self.action_input == "action_head":
                action = torch.softmax(self.model.action_logits(h), dim=-1).detach()  # stopgrad: heads frozen
            else:
                taken = F.one_hot(batch["action"].clamp(min=0), self.model.n_actions).to(h.dtype)
                action = taken.unsqueeze(-2).expand(*h.shape[:-1], self.model.n_emotions, -1)
            error = (self.model.dynamics(h, action) - batch["next_observation"].unsqueeze(-2)).pow(2).sum(-1)
            return TensorDict(loss=error.mean(-1), batch_size=batch.batch_size)
        if self.action_input == "action_head":
            action = torch.softmax(self.model.action_logits(h, emotion), dim=-1).detach()  # stopgrad: heads frozen
        else:
            action = F.one_hot(batch["action"].clamp(min=0), self.model.n_actions).to(h.dtype)
        z_pred = self.model.dynamics(h, action, emotion)
        return TensorDict(loss=(z_pred - batch["next_observation"]).pow(2).sum(-1), batch_size=batch.batch_size)
