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

from emotion_rl.history import HISTORY_KEYS
from emotion_rl.model import EmotionModel, Encoding, ValueReadout, check_value_readout, state_value

__all__ = [
    "ACTION_LOSSES",
    "ActionLoss",
    "DynamicsAction",
    "DynamicsLoss",
    "LiteralActionLoss",
    "MaxValueActionLoss",
    "PhaseLoss",
    "PolicyLoss",
    "ValueLoss",
    "ValueTarget",
    "action_loss_class",
    "frozen",
    "imagined_next",
    "masked_mean",
    "step_weight",
    "terminated_steps",
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


def imagined_next(model: EmotionModel, encoding: Encoding, *observations: Tensor) -> list[Tensor]:
    """Hidden states ``[B, L, d]`` of imagined tokens ``(none, none, 0, s)`` that follow each step ``t``: position
    ``t + 1``, seeing the real steps ``0..t`` (spec 1.5, decision 5). One stream for every ``observations[i]``
    ``[B, L, obs]`` (``s`` for step ``t`` at ``[:, t]``), in one pass."""
    batch, length = encoding.hidden.shape[:2]
    steps = torch.arange(length, device=encoding.hidden.device)
    count = len(observations)
    visible = (steps.view(1, -1) <= steps.view(-1, 1)).expand(batch, length, length)  # real 0..t
    positions = (steps + 1).expand(batch, length)
    if count > 1:
        visible, positions = visible.repeat(1, count, 1), positions.repeat(1, count)
    hidden = model.encode_imagined(encoding, torch.cat(observations, dim=1), positions, visible)
    return list(hidden.split(length, dim=1))


def terminated_steps(batch: TensorDictBase) -> Tensor:
    """Where an episode terminated (no value after it), ``[B, L]``: ``terminated`` when the batch has it, else
    ``done`` (every episode end then counts as a termination)."""
    return batch.get("terminated") if "terminated" in batch.keys() else batch.get("done")


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
        return [*HISTORY_KEYS, "mask", *self.reads, "weight"]

    @property
    def out_keys(self) -> list[str]:
        return [f"loss_{self.name}", *self.diagnostics]

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        """Per-step ``loss`` and diagnostics, TensorDict ``[B, L]``."""
        raise NotImplementedError

    def forward(self, batch: TensorDictBase) -> TensorDict:
        per_step, weight = self.per_step(batch), step_weight(batch)
        out = {key: masked_mean(value, weight) for key, value in per_step.items()}
        out[f"loss_{self.name}"] = out.pop("loss")
        return TensorDict(out)


class DynamicsLoss(PhaseLoss):
    """Phase 1 (spec 2.2.3): ``||Z^e(h_t, a) - s_{t+1}||^2`` for the selected emotion, e = e_t.

    ``action_input``: ``"action_head"`` (literal: ``a = stopgrad(softmax(A^e(h_t)))``) or ``"taken"`` (one-hot of
    the action taken, decision 8). ``all_emotions``: every emotion's head learns every transition (the mean of the
    E errors; beyond the specification). Trains the dynamics heads and the transformer.
    """

    name = "dynamics"
    reads = ("next_observation",)

    def __init__(
        self, model: EmotionModel, action_input: DynamicsAction = "action_head", all_emotions: bool = False
    ) -> None:
        super().__init__(model)
        if action_input not in DynamicsAction.__args__:
            raise ValueError(f"dynamics_action={action_input!r} is not supported; choose one of action_head, taken")
        self.action_input, self.all_emotions = action_input, all_emotions

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        h = self.model.encode(batch).hidden
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


class ActionLoss(PhaseLoss):
    """Phase 2 (spec 2.2.4): the action heads learn through the frozen dynamics heads.

    The trainable part is shared: ``a = softmax(A^e(h_t))`` (action heads and transformer). A subclass gives the
    objective on it (:meth:`objective`); the agent picks the class by ``phase2_objective`` (a short name of
    :data:`ACTION_LOSSES` or a dotted class path). Diagnostic ``imagined_value``: the value the objective reads.

    Options (all off by default; docs/training.md): ``update_transformer=False`` detaches ``h_t`` (phase 2 moves
    the action heads only); ``normalize_value`` divides the objective by the batch's spread of imagined values;
    ``entropy_coef`` subtracts ``coef * H(A^e(h_t))``; ``awr_coef`` adds the advantage-weighted log-likelihood of
    the taken action, ``-coef * min(exp(adv / awr_beta), 20) * log A^e(a_t | h_t)``, ``adv = return_scale * G_t -
    V^e(s_t)`` (beyond the specification; reads ``return``). ``value_readout``: how the critic reads the value of
    the imagined state (``"mean"`` of its values, or ``"policy"``: ``sum_e pi(e | s) V^e(s)``, docs/training.md).
    """

    name = "action"
    diagnostics = ("imagined_value",)

    def __init__(
        self,
        model: EmotionModel,
        update_transformer: bool = True,
        normalize_value: bool = False,
        entropy_coef: float = 0.0,
        awr_coef: float = 0.0,
        awr_beta: float = 1.0,
        return_scale: float = 1.0,
        value_readout: ValueReadout = "mean",
    ) -> None:
        super().__init__(model)
        self.value_readout = check_value_readout(value_readout)
        if entropy_coef < 0 or awr_coef < 0 or awr_beta <= 0:
            raise ValueError("action loss: entropy_coef and awr_coef must be >= 0 and awr_beta > 0")
        self.update_transformer, self.normalize_value = update_transformer, normalize_value
        self.entropy_coef, self.awr_coef, self.awr_beta = entropy_coef, awr_coef, awr_beta
        self.return_scale = return_scale
        self.reads = ("return",) if awr_coef else ()

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        encoding = self.model.encode(batch)
        emotion = batch["emotion"]
        hidden = encoding.hidden if self.update_transformer else encoding.hidden.detach()
        logits = self.model.action_logits(hidden, emotion)
        action = torch.softmax(logits, dim=-1)  # trainable
        loss, value = self.objective(encoding, action, emotion)
        if self.normalize_value:  # objective in units of the batch's spread of imagined values
            weight = step_weight(batch).to(value.dtype)
            mean = masked_mean(value, weight)
            loss = loss / masked_mean((value - mean).pow(2), weight).sqrt().detach().clamp(min=1e-3)
        log_probs = torch.log_softmax(logits, dim=-1) if self.entropy_coef or self.awr_coef else None
        if self.entropy_coef:
            loss = loss + self.entropy_coef * (log_probs.exp() * log_probs).sum(-1)  # - coef * entropy
        if self.awr_coef:
            with torch.no_grad():
                baseline = self.model.emotion_values(encoding.hidden, emotion)
                advantage = self.return_scale * batch["return"] - baseline
                awr_weight = (advantage / self.awr_beta).exp().clamp(max=20.0)
            taken = log_probs.gather(-1, batch["action"].clamp(min=0).unsqueeze(-1)).squeeze(-1)
            loss = loss - self.awr_coef * awr_weight * taken
        return TensorDict(loss=loss, imagined_value=value.detach(), batch_size=batch.batch_size)

    def objective(self, encoding: Encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step ``(loss, imagined value)`` ``[B, L]`` from the encoding, ``a`` ``[B, L, A]`` and ``e_t``."""
        raise NotImplementedError


class MaxValueActionLoss(ActionLoss):
    """Section 4.3 (decision 7): ``-V(Z^e(stopgrad(h_t), a))``, V the value the frozen model gives the imagined
    next state appended to the real steps ``0..t``, read as the search's leaf reads it: the mean of the E values
    (spec 1.4) or, with ``value_readout="policy"``, ``sum_e pi(e | z) V^e(z)`` (the gradient to ``a`` then flows
    through both the frozen policy and value heads)."""

    def objective(self, encoding: Encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:
        with frozen(self.model):  # the critic: dynamics, transformer, value and policy heads all held fixed
            z_pred = self.model.dynamics(encoding.hidden.detach(), action, emotion)
            (imagined,) = imagined_next(self.model, encoding.detach(), z_pred)
            policy = torch.softmax(self.model.policy_logits(imagined), -1) if self.value_readout == "policy" else None
            value = state_value(self.model.emotion_values(imagined), policy, self.value_readout)
        return -value, value


class LiteralActionLoss(ActionLoss):
    """Spec 2.2.4 as written: ``MSE(Z^e(stopgrad(h), a), stopgrad(Z^e(h, a)))``, identically zero with zero
    gradient (decision 7). Kept to run the specification literally."""

    def objective(self, encoding: Encoding, action: Tensor, emotion: Tensor) -> tuple[Tensor, Tensor]:
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
    ) -> None:
        super().__init__(model)
        self.value_readout = check_value_readout(value_readout)
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

    def per_step(self, batch: TensorDictBase) -> TensorDict:
        encoding = self.model.encode(batch)
        value = self.model.emotion_values(encoding.hidden, batch["emotion"])
        targets, next_targets = self.targets(batch, with_next=bool(self.imagined_weight))
        loss = (value - targets).pow(2)
        if self.imagined_weight:
            loss = loss + self.imagined_weight * self.imagined_errors(batch, encoding, next_targets).sum(0)
        return TensorDict(loss=loss, batch_size=batch.batch_size)

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
        terminal = terminated_steps(batch).bool() & mask & ~has_next
        next_emotion = torch.cat([batch["emotion"][:, 1:], batch["emotion"][:, :1]], 1).clamp(min=0).unsqueeze(-1)
        errors = []
        for hidden in self.imagined_hidden(batch, encoding):
            values = self.model.emotion_values(hidden)
            policy = None
            if self.value_readout == "policy":  # readout weights only: the policy head does not learn in phase 3
                policy = torch.softmax(self.model.policy_logits(hidden), -1).detach()
            row_end = state_value(values, policy, self.value_readout)
            read = torch.where(has_next, values.gather(-1, next_emotion).squeeze(-1), row_end)
            error = torch.where(terminal, values.pow(2).mean(-1), (read - next_targets).pow(2))
            errors.append(error * mask)
        return torch.stack(errors)


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
