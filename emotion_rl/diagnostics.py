"""What the learner logs about itself besides its losses (docs/training.md, "Diagnostics"): how different the
emotions' action heads are, how well the values read at imagined tokens match their targets, and whether the
search's decisions lead by more than the values' error."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor

from emotion_rl.losses import ValueLoss, masked_mean, step_weight
from emotion_rl.mcts.root_gap import ROOT_GAP_KEYS
from emotion_rl.model import EmotionModel

__all__ = ["DiagnosticsSchedule", "collection_metrics", "gap_diagnostics", "learning_diagnostics"]

SEARCH_STATS = ("kl_target_prior", "argmax_agreement", "action_changed", "emotion_changed", "surprise", "root_selected")
"""The collection's search statistics logged as ``search/<name>`` (docs/training.md)."""
REPLAY_STATS = {
    "stored_steps": "replay/stored_steps",
    "stored_episodes": "replay/stored_episodes",
    "replay_ratio": "replay/ratio",
}
"""The replay's size and the effective replay ratio (``stats`` key: logged name; docs/data.md, "Replay ratio")."""


def collection_metrics(stats: TensorDictBase) -> dict[str, Tensor]:
    """One collection's logged scalars from the training stream's ``stats``: the finished episodes' mean return
    (when one finished) and why they ended (``episode/end_<class>`` shares), env steps, episode count, the
    temperature (when a temperature draw chose emotions, decision 25), emotion usage, the search's statistics
    (``search/kl_target_prior``: mean KL(policy target || prior) at the root; ``search/argmax_agreement``: share of
    states whose policy target's favourite emotion is the prior's favourite; ``search/action_changed`` ...) and the
    replay's (``replay/stored_steps``, ``replay/stored_episodes``, ``replay/ratio``), the non-finite ones left out."""
    logs = {}
    if torch.isfinite(stats["episode_return"]):
        logs["episode/return"] = stats["episode_return"]
    logs["episode/env_steps"] = stats["env_steps"].float()
    logs["episode/count"] = stats["episodes"].float()
    if torch.isfinite(stats["temperature"]):  # NaN: no temperature draw chose an emotion (the Gumbel root chose)
        logs["train/temperature"] = stats["temperature"].float()
    for k, usage in enumerate(stats["emotion_usage"].unbind(-1)):
        logs[f"emotion/usage_{k}"] = usage
    names = {**{key: f"search/{key}" for key in SEARCH_STATS}, **REPLAY_STATS}
    if "endings" in stats.keys():
        names.update({("endings", key): f"episode/end_{key}" for key in stats["endings"].keys()})
    for key, name in names.items():
        value = stats.get(key, None)
        if value is not None and bool(torch.isfinite(value)):
            logs[name] = value.float()
    return logs


class DiagnosticsSchedule:
    """When the learner logs :func:`learning_diagnostics`: on the first training batch of a collection, at most
    once per ``interval`` env steps (on the first collection past each multiple; 0: every collection). Kept in
    memory, not in checkpoints: a resumed run logs them at its first collection."""

    def __init__(self, interval: int = 0) -> None:
        self.interval, self.bucket = max(int(interval), 1), None

    def due(self, stats: TensorDictBase) -> bool:
        """Whether the batch carrying ``stats`` logs them (``emotion_usage`` NaN: a later batch of a collection)."""
        if bool(stats["emotion_usage"].isnan().all()):
            return False
        bucket = int(stats["env_steps"]) // self.interval
        due, self.bucket = bucket != self.bucket, bucket
        return due


@torch.no_grad()
def learning_diagnostics(
    model: EmotionModel, value_loss: ValueLoss, batch: TensorDictBase, stats: TensorDictBase | None = None
) -> dict[str, Tensor]:
    """Per batch ``[B, L]``: each action head's entropy and how often the heads' argmax actions agree (pairs of
    emotions); the values read at imagined tokens (``value_loss``'s targets): their error on ``y_{t+1}`` (true and
    predicted next state) and their bias against the value at the real next token (mean over emotions); the value
    error, ``value_rmse``: the root mean square of ``V^{e_t}(s_t) - y_t``, phase 3's error in value units.

    With the collection's ``stats`` carrying the search's root gaps at the collected states (``root_q_gap``,
    ``root_action_gap``; :class:`~emotion_rl.data.selfplay.CollectionStats`): per gap, its median over the value
    error (``<gap>_over_value_rmse``) and the share of states where it is smaller (``<gap>_below_value_rmse``):
    decisions taken on a lead the values cannot resolve (issue 23).
    """
    mask, weight = batch["mask"], step_weight(batch)
    encoding = model.encode(batch)
    log_probs = torch.log_softmax(model.action_logits(encoding.hidden), dim=-1)  # [B, L, E, A]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    n = model.n_emotions
    logs = {f"diagnostics/action_entropy_{e}": masked_mean(entropy[..., e], weight) for e in range(n)}
    best = log_probs.argmax(-1)
    pairs = ((best.unsqueeze(-1) == best.unsqueeze(-2)).sum((-1, -2)) - n).to(entropy.dtype)
    logs["diagnostics/action_agreement"] = masked_mean(pairs / max(n * (n - 1), 1), weight)
    targets, next_targets = value_loss.targets(batch)
    value_error = model.emotion_values(encoding.hidden, batch["emotion"]) - targets
    rmse = masked_mean(value_error.pow(2), weight).sqrt()
    logs["diagnostics/value_rmse"] = rmse
    logs.update(gap_diagnostics(stats, rmse))
    errors = value_loss.imagined_errors(batch, encoding, next_targets)
    logs["diagnostics/imagined_value_error_true"] = masked_mean(errors[0], weight)
    logs["diagnostics/imagined_value_error_predicted"] = masked_mean(errors[1], weight)
    imagined, _ = value_loss.imagined_values(batch, encoding)
    real_next = model.emotion_values(encoding.hidden[:, 1:]).mean(-1)
    has_next = mask[:, 1:] & mask[:, :-1]
    logs["diagnostics/imagined_value_bias"] = masked_mean(imagined[:, :-1].mean(-1) - real_next, has_next)
    return logs


def gap_diagnostics(stats: TensorDictBase | None, rmse: Tensor) -> dict[str, Tensor]:
    """``diagnostics/<gap>_over_value_rmse`` (median gap / ``rmse``) and ``diagnostics/<gap>_below_value_rmse``
    (share of gaps < ``rmse``) for each root gap the collection's ``stats`` carry with at least one state."""
    logs = {}
    for key in ROOT_GAP_KEYS:
        gaps = None if stats is None else stats.get(key, None)
        if gaps is None or gaps.numel() == 0:
            continue
        gaps = gaps.to(rmse.device, rmse.dtype)
        logs[f"diagnostics/{key}_over_value_rmse"] = gaps.median() / rmse
        logs[f"diagnostics/{key}_below_value_rmse"] = (gaps < rmse).to(rmse.dtype).mean()
    return logs
