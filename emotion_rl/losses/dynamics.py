"""Phase 1 (spec 2.2.3): the dynamics heads learn the next real observation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.losses.common import PhaseLoss, imagined_next
from emotion_rl.model import EmotionModel, Encoding

__all__ = ["DynamicsAction", "DynamicsLoss"]

DynamicsAction = Literal["action_head", "taken"]


class DynamicsLoss(PhaseLoss):
    """Phase 1 (spec 2.2.3): ``||Z^e(h_t, a) - s_{t+1}||^2`` for the selected emotion, e = e_t.

    ``action_input``: ``"action_head"`` (literal: ``a = stopgrad(softmax(A^e(h_t)))``) or ``"taken"`` (one-hot of
    the action taken, decision 8). ``all_emotions``: every emotion's head learns every transition (the mean of the
    E errors; beyond the specification). Trains the dynamics heads and the transformer.

    ``imagined_weight`` > 0 (beyond the specification) also trains the dynamics where the search's deeper
    expansions read them: at the imagined token ``(none, none, 0, s_{t+1})`` after the real steps ``0..t`` (the
    slot an expansion evaluates, spec 1.5), the next step's transition ``Z^{e_{t+1}}(h', a_{t+1}) -> s_{t+2}``.
    Without it the dynamics heads learn at real tokens only, and the states the search imagines from depth 2 on
    are no better than "nothing moves" (docs/results.md, "How far the search sees").

    Args:
        model: the model whose dynamics heads learn (given by the agent).
        action_input: ``"action_head"`` (spec 2.2.3: the detached softmax of the emotion's action head) or
            ``"taken"`` (the one-hot of the action taken; decision 8).
        all_emotions: every emotion's dynamics head learns every transition, each with its own action input.
        imagined_weight: weight of the transitions learned at imagined tokens (0: real tokens only, the spec).
    """

    name = "dynamics"
    reads = ("next_observation",)

    def __init__(
        self,
        model: EmotionModel,
        action_input: DynamicsAction = "action_head",
        all_emotions: bool = False,
        imagined_weight: float = 0.0,
    ) -> None:
        super().__init__(model)
        if action_input not in DynamicsAction.__args__:
            raise ValueError(f"action_input={action_input!r} is not supported; choose one of action_head, taken")
        if not imagined_weight >= 0:
            raise ValueError(f"DynamicsLoss: imagined_weight must be >= 0, got {imagined_weight}")
        self.action_input, self.all_emotions, self.imagined_weight = action_input, all_emotions, imagined_weight

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        encoding = self.encode(batch, encoding)
        loss = self.errors(encoding.hidden, batch["action"], batch["emotion"], batch["next_observation"])
        if self.imagined_weight:  # step t + 1's transition, from the imagined token of s_{t+1} after steps 0..t
            (imagined,) = imagined_next(self.model, encoding, batch["next_observation"])
            mask = batch["mask"]
            has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1) & mask

            def following(x: Tensor) -> Tensor:  # step t + 1's entry at t (the last column is masked out)
                return torch.cat([x[:, 1:], x[:, -1:]], 1)

            fields = (following(batch["action"]), following(batch["emotion"]), following(batch["next_observation"]))
            loss = loss + self.imagined_weight * self.errors(imagined, *fields) * has_next
        return TensorDict(loss=loss, batch_size=batch.batch_size)

    def errors(self, h: Tensor, taken_action: Tensor, emotion: Tensor, target: Tensor) -> Tensor:
        """Squared prediction errors ``[B, L]`` of the dynamics at hidden states ``h`` ``[B, L, d]`` against
        ``target`` ``[B, L, obs]``: emotion ``emotion``'s head, or with ``all_emotions`` the mean over every head
        (each with its own action input)."""
        if self.all_emotions:  # every head, its own action input: [B, L, E, obs]
            if self.action_input == "action_head":
                action = torch.softmax(self.model.action_logits(h), dim=-1).detach()  # stopgrad: heads frozen
            else:
                taken = F.one_hot(taken_action.clamp(min=0), self.model.n_actions).to(h.dtype)
                action = taken.unsqueeze(-2).expand(*h.shape[:-1], self.model.n_emotions, -1)
            return (self.model.dynamics(h, action) - target.unsqueeze(-2)).pow(2).sum(-1).mean(-1)
        if self.action_input == "action_head":
            action = torch.softmax(self.model.action_logits(h, emotion), dim=-1).detach()  # stopgrad: heads frozen
        else:
            action = F.one_hot(taken_action.clamp(min=0), self.model.n_actions).to(h.dtype)
        return (self.model.dynamics(h, action, emotion) - target).pow(2).sum(-1)
