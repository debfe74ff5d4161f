"""What the learner logs about itself besides its losses (docs/training.md, "Diagnostics"): how different the
emotions' action heads are, and how well the values read at imagined tokens match their targets."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor

from emotion_rl.losses import ValueLoss, masked_mean, step_weight
from emotion_rl.model import EmotionModel

__all__ = ["learning_diagnostics"]


@torch.no_grad()
def learning_diagnostics(model: EmotionModel, value_loss: ValueLoss, batch: TensorDictBase) -> dict[str, Tensor]:
    """Per batch ``[B, L]``: each action head's entropy and how often the heads' argmax actions agree (pairs of
    emotions); the values read at imagined tokens (``value_loss``'s targets): their error on ``y_{t+1}`` (true and
    predicted next state) and their bias against the value at the real next token (mean over emotions)."""
    mask, weight = batch["mask"], step_weight(batch)
    encoding = model.encode(batch)
    log_probs = torch.log_softmax(model.action_logits(encoding.hidden), dim=-1)  # [B, L, E, A]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    n = model.n_emotions
    logs = {f"diagnostics/action_entropy_{e}": masked_mean(entropy[..., e], weight) for e in range(n)}
    best = log_probs.argmax(-1)
    pairs = ((best.unsqueeze(-1) == best.unsqueeze(-2)).sum((-1, -2)) - n).to(entropy.dtype)
    logs["diagnostics/action_agreement"] = masked_mean(pairs / max(n * (n - 1), 1), weight)
    _, next_targets = value_loss.targets(batch)
    errors = value_loss.imagined_errors(batch, encoding, next_targets)
    logs["diagnostics/imagined_value_error_true"] = masked_mean(errors[0], weight)
    logs["diagnostics/imagined_value_error_predicted"] = masked_mean(errors[1], weight)
    imagined, _ = value_loss.imagined_values(batch, encoding)
    real_next = model.emotion_values(encoding.hidden[:, 1:]).mean(-1)
    has_next = mask[:, 1:] & mask[:, :-1]
    logs["diagnostics/imagined_value_bias"] = masked_mean(imagined[:, :-1].mean(-1) - real_next, has_next)
    return logs
