"""Phase 3 (spec 2.2.2): the value heads learn returns (Monte Carlo, n-step or TD(lambda) targets), optionally
also at the imagined tokens the search reads."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.losses.common import PhaseLoss, imagined_next, terminated_steps
from emotion_rl.model import EmotionModel, Encoding, ValueReadout, check_value_readout, state_value

__all__ = ["ValueLoss", "ValueTarget"]

ValueTarget = Literal["monte_carlo", "n_step", "td_lambda"]


class ValueLoss(PhaseLoss):
    """Phase 3 (spec 2.2.2): ``(V^e(s_t) - y_t)^2`` for the selected emotion. Trains the value heads and the
    transformer.

    Targets ``y`` (value units): ``"monte_carlo"`` (literal): ``return_scale * G_t`` from the ``return`` key.
    ``"n_step"`` (``n``) and ``"td_lambda"`` (``lam``): rewards ``return_scale * r`` bootstrapped from
    ``target_model`` (an EMA copy, or the model itself): ``V^{e_k}(s_k)`` at real steps; after a row's last step,
    0 if it terminated (:func:`terminated_steps`), else the policy-weighted value of the imagined token of its
    ``next_observation`` (truncation, or the end of a window).

    ``imagined_weight`` > 0 also trains the values read at imagined tokens ``(none, none, 0, s)`` after each step
    ``t`` (position ``t + 1``, the slot the search reads), for ``s`` the true ``s_{t+1}`` and the dynamics head's
    ``Z^{e_t}(h_t, a_t)`` (detached), on ``y_{t+1}``: ``V^{e_{t+1}}``; at a row's end (``e_{t+1}`` unseen) the
    search's leaf value, read by ``value_readout``: the mean of the ``V^e`` (``"mean"``) or ``sum_e pi(e | s)
    V^e(s)`` with ``pi`` the policy head's detached output at that token (``"policy"``); after a termination every
    ``V^e`` on 0. The bootstrap past a row's end is the policy-weighted value under either readout (it was before
    the option existed; ``"mean"`` keeps every default bit for bit).

    ``all_emotions`` (beyond the specification): every ``V^e`` learns ``y_t`` at every step, weighted by how
    likely emotion ``e``'s head was to take the action taken, ``min(1, p_e(a_t | s_t) / p_{e_t}(a_t | s_t))``
    (weight 1 for ``e_t`` itself): the return after ``a_t`` is evidence about every emotion that would have taken
    ``a_t``. With heads that differ (docs/training.md, "Emotions that differ") each value sees more data.
    """

    name = "value"

    def __init__(
        self,
        model: EmotionModel,
        return_scale: float = 1.0,
        target: ValueTarget = "monte_carlo",
        gamma: float = 0.99,
        n: int = 5,
        lam: float = 0.95,
        target_model: EmotionModel | None = None,
        imagined_weight: float = 0.0,
        value_readout: ValueReadout = "mean",
        all_emotions: bool = False,
    ) -> None:
        super().__init__(model)
        self.value_readout = check_value_readout(value_readout)
        self.all_emotions = all_emotions
        if return_scale <= 0:
            raise ValueError(f"return_scale must be > 0, got {return_scale}")
        if target not in ValueTarget.__args__:
            raise ValueError(f"value_target={target!r} is not supported; choose one of {list(ValueTarget.__args__)}")
        if n < 1 or not 0 <= lam <= 1 or not 0 < gamma <= 1 or imagined_weight < 0:
            raise ValueError("value loss: needs n >= 1, 0 <= lam <= 1, 0 < gamma <= 1, imagined_weight >= 0")
        self.return_scale, self.target, self.gamma, self.n, self.lam = return_scale, target, gamma, n, lam
        self.imagined_weight = imagined_weight
        object.__setattr__(self, "target_model", target_model)  # not a submodule: its owner saves it
        reads = ("return",) if target == "monte_carlo" else ("next_observation", "done")
        self.reads = tuple(dict.fromkeys(reads + (("next_observation", "done") if imagined_weight else ())))

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

    @torch.no_grad()
    def targets(self, batch: TensorDictBase, with_next: bool = True) -> tuple[Tensor, Tensor | None]:
        """``y_t`` and ``y_{t+1}`` ``[B, L]`` in value units (no gradient). Past a row's last step ``y_{t+1}`` is
        0 after a termination, else the bootstrap (monte_carlo: ``(y_t - return_scale * r_t) / gamma``).
        Monte Carlo without ``with_next`` reads ``return`` only."""
        if self.target == "monte_carlo" and not with_next:
            return self.return_scale * batch["return"], None
        mask = batch["mask"]
        batch_size, length = mask.shape
        last = (mask.long().sum(-1) - 1).clamp(min=0)  # [B]
        rows = torch.arange(batch_size, device=mask.device)
        reward = self.return_scale * batch["reward"] * mask
        ended = terminated_steps(batch)[rows, last].bool()
        if self.target == "monte_carlo":
            y = self.return_scale * batch["return"]
            boot = ((y - reward) / self.gamma)[rows, last].masked_fill(ended, 0.0)
            return y, torch.cat([y[:, 1:], y.new_zeros(batch_size, 1)], 1).index_put((rows, last), boot)
        model = self.target_model if self.target_model is not None else self.model
        encoding = model.encode(batch)
        (imagined,) = imagined_next(model, encoding, batch["next_observation"])
        boot = (torch.softmax(model.policy_logits(imagined), -1) * model.emotion_values(imagined)).sum(-1)[rows, last]
        boot = boot.masked_fill(ended, 0.0)
        v_next = torch.cat([model.emotion_values(encoding.hidden, batch["emotion"]), boot.new_zeros(batch_size, 1)], 1)
        v_next[rows, last + 1] = boot  # v_next[:, k] = V(s_k), k = 0..L; past a row's end: its bootstrap
        steps = torch.arange(length, device=mask.device)
        if self.target == "n_step":  # sum_{k < m} gamma^k r_{t+k} + gamma^m V(s_{t+m}), m = min(n, last + 1 - t)
            y, discount = torch.zeros_like(reward), torch.ones_like(reward)
            for k in range(self.n):
                inside = (steps + k).unsqueeze(0) <= last.unsqueeze(-1)
                y = y + torch.where(inside, discount * reward[:, (steps + k).clamp(max=length - 1)], 0.0)
                discount = torch.where(inside, discount * self.gamma, discount)
            y = y + discount * v_next.gather(1, torch.minimum(steps + self.n, last.unsqueeze(-1) + 1))
        else:  # td_lambda: G_t = r_t + gamma ((1 - lam) V(s_{t+1}) + lam G_{t+1}), backwards from each row's end
            g, y = v_next[:, length], torch.zeros_like(reward)
            for t in range(length - 1, -1, -1):
                after = torch.where(t == last, v_next[:, t + 1], g)  # G_{t+1} past the end: the bootstrap
                g = reward[:, t] + self.gamma * ((1 - self.lam) * v_next[:, t + 1] + self.lam * after)
                y[:, t] = g
        return y, torch.cat([y[:, 1:], y.new_zeros(batch_size, 1)], 1).index_put((rows, last), boot)

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
            end_hidden = hidden[ends]  # [R, d]
            values = self.model.emotion_values(end_hidden)  # [R, E]
            policy = None
            if self.value_readout == "policy":  # readout weights only: the policy head does not learn in phase 3
                policy = torch.softmax(self.model.policy_logits(end_hidden), -1).detach()
            row_end = (state_value(values, policy, self.value_readout) - next_targets[ends]).pow(2)
            error = error.index_put(ends, torch.where(terminal, values.pow(2).mean(-1), row_end))
            errors.append(error * mask)
        return torch.stack(errors)
