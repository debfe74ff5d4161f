"""Phase 4 (spec 2.2.1): the policy head imitates the search's policy target."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from emotion_rl.losses.common import PhaseLoss
from emotion_rl.model import Encoding

__all__ = ["PolicyLoss"]


class PolicyLoss(PhaseLoss):
    """Phase 4 (spec 2.2.1): ``-sum_e pi_MCTS(e) log pi(e | s_t)`` (log-softmax in place of ``log(p + eps)``), the
    stored search target as ``pi_MCTS`` (``policy_target`` key: the visit distribution under the pUCT root, the
    improved policy under the Gumbel root). Trains the policy head and the transformer.

    Args:
        model: the model whose policy head learns (given by the agent).
    """

    name = "policy"
    reads = ("policy_target",)

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        h = self.encode(batch, encoding).hidden
        log_policy = torch.log_softmax(self.model.policy_logits(h), dim=-1)
        loss = -(batch["policy_target"] * log_policy).sum(-1)
        return TensorDict(loss=loss, batch_size=batch.batch_size)
