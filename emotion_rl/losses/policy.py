"""Phase 4 (spec 2.2.1): the policy head imitates the search's visit distribution."""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict, TensorDictBase

from emotion_rl.losses.common import PhaseLoss, step_weight
from emotion_rl.model import EmotionModel, Encoding

__all__ = ["PolicyLoss"]


class PolicyLoss(PhaseLoss):
    """Phase 4 (spec 2.2.1): ``-sum_e pi_MCTS(e) log pi(e | s_t)`` (log-softmax in place of ``log(p + eps)``), the
    stored search visit distribution as target (``visit_distribution`` key). Trains the policy head and the
    transformer.

    ``balance_coef`` (beyond the specification) adds ``coef * KL(uniform || mean_s pi(. | s))`` over the batch's
    steps: load balancing, as mixture-of-experts routers use, so that usage does not collapse onto one or two
    emotions while each state may still prefer a few (the same batch-level number on every step).
    """

    name = "policy"
    reads = ("visit_distribution",)

    def __init__(self, model: EmotionModel, balance_coef: float = 0.0) -> None:
        super().__init__(model)
        if balance_coef < 0:
            raise ValueError(f"policy_balance_coef must be >= 0, got {balance_coef}")
        self.balance_coef = balance_coef

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        h = self.encode(batch, encoding).hidden
        log_policy = torch.log_softmax(self.model.policy_logits(h), dim=-1)
        loss = -(batch["visit_distribution"] * log_policy).sum(-1)
        if self.balance_coef:
            weight = step_weight(batch).to(log_policy.dtype)
            usage = (weight.unsqueeze(-1) * log_policy.exp()).sum((0, 1)) / weight.sum().clamp(min=1)  # [E]
            kl = -usage.clamp_min(1e-12).log().mean() - math.log(usage.shape[-1])
            loss = loss + self.balance_coef * kl
        return TensorDict(loss=loss, batch_size=batch.batch_size)
