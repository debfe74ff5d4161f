"""Phase 3 (spec 2.2.2): the value heads learn targets from an estimator (the Monte Carlo return,
``emotion_rl/losses/targets.py``), optionally also at the imagined tokens the search reads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.losses.common import PhaseLoss, imagined_next, terminated_steps
from emotion_rl.losses.targets import MonteCarlo, ValueEstimator
from emotion_rl.model import EmotionModel, Encoding

__all__ = ["ValueLoss"]


class ValueLoss(PhaseLoss):
    """Phase 3 (spec 2.2.2): ``(V^e(s_t) - y_t)^2`` for the selected emotion. Trains the value heads and the
    transformer.

    The targets ``y`` (value units) come from ``target`` (:class:`~emotion_rl.losses.targets.ValueEstimator`), given
    the model this loss trains.

    ``imagined_weight`` > 0 also trains the values read at imagined tokens ``(none, none, 0, s)`` after each step
    ``t`` (position ``t + 1``, the slot the search reads), for ``s`` the true ``s_{t+1}`` and the dynamics head's
    ``Z^{e_t}(h_t, a_t)`` (detached), on ``y_{t+1}``: ``V^{e_{t+1}}``; at a row's end (``e_{t+1}`` unseen) the
    search's leaf value (:meth:`EmotionModel.state_value`, the mean of the ``V^e``); after a termination every
    ``V^e`` on 0.

    ``all_emotions`` (beyond the specification): every ``V^e`` learns ``y_t`` at every step, weighted by how
    likely emotion ``e``'s head was to take the action taken, ``min(1, p_e(a_t | s_t) / p_{e_t}(a_t | s_t))``
    (weight 1 for ``e_t`` itself): the return after ``a_t`` is evidence about every emotion that would have taken
    ``a_t``. With heads that differ (docs/training.md, "Emotions that differ") each value sees more data.

    Args:
        model: the model whose value heads learn (given by the agent).
        gamma: the discount of the targets; the data's ``gamma`` (the agent gives its own, linked from the data).
        return_scale: targets are ``return_scale * G`` (rewards times ``return_scale``): the value heads and the
            search work in those units.
        target: the value estimator; ``None``: :class:`~emotion_rl.losses.targets.MonteCarlo` (spec 2.2.2).
        imagined_weight: weight of the imagined-token value errors (0: off).
        all_emotions: every emotion's value learns each step, weighted as above.
    """

    name = "value"

    def __init__(
        self,
        model: EmotionModel,
        gamma: float,
        return_scale: float = 1.0,
        target: ValueEstimator | None = None,
        imagined_weight: float = 0.0,
        all_emotions: bool = False,
    ) -> None:
        super().__init__(model)
        if return_scale <= 0:
            raise ValueError(f"return_scale must be > 0, got {return_scale}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if imagined_weight < 0:
            raise ValueError(f"imagined_weight must be >= 0, got {imagined_weight}")
        self.target = MonteCarlo() if target is None else target
        if not isinstance(self.target, ValueEstimator):
            raise TypeError(f"target must be a ValueEstimator (e.g. MonteCarlo), got {self.target!r}")
        self.gamma, self.return_scale = gamma, return_scale
        self.imagined_weight, self.all_emotions = imagined_weight, all_emotions
        reads = self.target.reads + (("next_observation", "done") if imagined_weight else ())
        self.reads = tuple(dict.fromkeys(reads))

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        encoding = self.encode(batch, encoding)
        targets, next_targets = self.targets(batch, with_next=bool(self.imagined_weight))
        if self.all_emotions:
            values = self.model.emotion_values(encoding.hidden)  # [B, L, E]
            loss = (self.emotion_weights(batch, encoding) * (values - targets.unsqueeze(-1)).pow(2)).sum(-1)
        else:
            loss = (self.model.emotion_values(encoding.hidden, batch["emotion"]) - targets).pow(2)
        if self.imagined_weight:
            loss = loss + self.imagined_weight * self.imagined_errors(batch, encoding, next_targets).sum(0)
        return TensorDict(loss=loss, batch_size=batch.batch_size)

    @torch.no_grad()
    def emotion_weights(self, batch: TensorDictBase, encoding: Encoding) -> Tensor:
        """``min(1, p_e(a_t | s_t) / p_{e_t}(a_t | s_t))`` ``[B, L, E]``, 1 at ``e_t`` (``all_emotions``)."""
        emotion = batch["emotion"].clamp(min=0).unsqueeze(-1)
        action = batch["action"].clamp(min=0)
        probs = torch.softmax(self.model.action_logits(encoding.hidden), dim=-1)  # [B, L, E, A]
        taken = probs.gather(-1, action.view(*action.shape, 1, 1).expand(*probs.shape[:-1], 1)).squeeze(-1)
        weight = (taken / taken.gather(-1, emotion).clamp_min(1e-12)).clamp(max=1.0)
        return weight.scatter(-1, emotion, 1.0)

    def targets(self, batch: TensorDictBase, with_next: bool = True) -> tuple[Tensor, Tensor | None]:
        """``y_t`` and ``y_{t+1}`` ``[B, L]`` in value units (no gradient), from :attr:`target`."""
        return self.target.targets(batch, self.model, self.gamma, self.return_scale, with_next)

    def bootstrap(self, episodes: TensorDictBase) -> Tensor | None:
        """What :attr:`target` asks to store with episodes ``[K, L]`` cut by the time limit (``[K]`` in reward
        units, or ``None``: nothing; :meth:`ValueEstimator.bootstrap`), valued by the model this loss trains."""
        return self.target.bootstrap(episodes, self.model, self.return_scale)

    def imagined_hidden(self, batch: TensorDictBase, encoding: Encoding) -> tuple[Tensor, Tensor]:
        """Hidden states ``[B, L, d]`` of the imagined token after step ``t`` of the true ``s_{t+1}`` and of the
        predicted ``Z^{e_t}(h_t, a_t)`` (stopgrad: the dynamics head does not learn here)."""
        emotion = batch["emotion"]
        with torch.no_grad():
            taken = F.one_hot(batch["action"].clamp(min=0), self.model.n_actions).to(encoding.hidden.dtype)
            predicted = self.model.dynamics(encoding.hidden, taken, emotion)
        true, pred = imagined_next(self.model, encoding, batch["next_observation"], predicted)
        return true, pred

    def imagined_values(self, batch: TensorDictBase, encoding: Encoding) -> tuple[Tensor, Tensor]:
        """Every ``V^e`` ``[B, L, E]`` at the imagined tokens of :meth:`imagined_hidden` (true, predicted)."""
        true, pred = self.imagined_hidden(batch, encoding)
        return self.model.emotion_values(true), self.model.emotion_values(pred)

    def imagined_errors(self, batch: TensorDictBase, encoding: Encoding, next_targets: Tensor) -> Tensor:
        """Squared errors ``[2, B, L]`` (true, predicted next state) of the imagined-token values on ``y_{t+1}``."""
        mask = batch["mask"]
        has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1) & mask
        ends = (mask & ~has_next).nonzero(as_tuple=True)  # each row's last step: the only reads of every V^e
        terminal = terminated_steps(batch).bool()[ends]
        next_emotion = torch.cat([batch["emotion"][:, 1:], batch["emotion"][:, :1]], 1).clamp(min=0)
        errors = []
        for hidden in self.imagined_hidden(batch, encoding):
            read = self.model.emotion_values(hidden, next_emotion)  # V^{e_{t+1}} only: one head of E per step
            error = (read - next_targets).pow(2) * has_next
            values = self.model.emotion_values(hidden[ends])  # [R, E]
            row_end = (self.model.state_value(values) - next_targets[ends]).pow(2)  # the search's leaf value
            error = error.index_put(ends, torch.where(terminal, values.pow(2).mean(-1), row_end))
            errors.append(error * mask)
        return torch.stack(errors)
