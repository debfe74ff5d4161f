"""Phase 2 (spec 2.2.4): the action heads. The literal objective, the section 4.3 objective, and the registry
of phase-2 loss classes the agent picks from by name."""

from __future__ import annotations

import importlib

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.losses.common import PhaseLoss, frozen, imagined_next, masked_mean, step_weight
from emotion_rl.model import EmotionModel, Encoding, ValueReadout, check_value_readout, state_value

__all__ = [
    "ACTION_LOSSES",
    "ActionLoss",
    "AssignedActionLoss",
    "ImprovementActionLoss",
    "LiteralActionLoss",
    "MaxValueActionLoss",
    "action_loss_class",
    "head_information",
]


def head_information(logits: Tensor) -> Tensor:
    """``I(e; a | s)`` for emotions drawn uniformly, ``[...]`` from every head's logits ``[..., E, A]``: the entropy
    of the heads' mean minus the mean of their entropies. 0 when every head proposes the same distribution; at
    most ``log min(E, A)``, when the heads are deterministic and together cover the actions (docs/training.md)."""
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    mean = p.mean(dim=-2)
    entropy_of_mean = -(mean * mean.clamp_min(1e-12).log()).sum(-1)
    mean_entropy = -(p * log_p).sum(-1).mean(-1)
    return entropy_of_mean - mean_entropy


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
    ``coverage_coef`` subtracts ``coef * I(e; a | s)`` (:func:`head_information`) over every head at every step, so
    that the emotions propose different actions (beyond the specification).
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
        coverage_coef: float = 0.0,
    ) -> None:
        super().__init__(model)
        self.value_readout = check_value_readout(value_readout)
        if entropy_coef < 0 or awr_coef < 0 or awr_beta <= 0 or coverage_coef < 0:
            raise ValueError("action loss: entropy_coef, awr_coef, coverage_coef must be >= 0 and awr_beta > 0")
        self.coverage_coef = coverage_coef
        self.update_transformer, self.normalize_value = update_transformer, normalize_value
        self.entropy_coef, self.awr_coef, self.awr_beta = entropy_coef, awr_coef, awr_beta
        self.return_scale = return_scale
        self.reads = ("return",) if awr_coef else ()

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        encoding = self.encode(batch, encoding)
        emotion = batch["emotion"]
        hidden = encoding.hidden if self.update_transformer else encoding.hidden.detach()
        logits = self.model.action_logits(hidden, emotion)  # the selected emotion's head, trainable
        loss, value = self.head_objective(batch, encoding, hidden, logits)
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
        if self.coverage_coef:  # every head, every step: the heads together span the actions
            loss = loss - self.coverage_coef * head_information(self.model.action_logits(hidden))
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


class AssignedActionLoss(ActionLoss):
    """A fixed assignment of actions to emotions (beyond the specification; the upper bound of coverage): every
    head, at every step, learns by cross-entropy to prefer action ``e mod A``, so the search over emotions is a
    search over actions and ``V^e`` the value of a known action. Diagnostic ``imagined_value``: 0 (nothing is
    imagined)."""

    def head_objective(
        self, batch: TensorDictBase, encoding: Encoding, hidden: Tensor, logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        log_p = torch.log_softmax(self.model.action_logits(hidden), dim=-1)  # [B, L, E, A]
        n_emotions, n_actions = log_p.shape[-2:]
        assigned = torch.arange(n_emotions, device=log_p.device) % n_actions
        loss = -log_p.gather(-1, assigned.view(n_emotions, 1).expand(*log_p.shape[:-1], 1)).squeeze(-1).mean(-1)
        return loss, torch.zeros_like(loss)


class ImprovementActionLoss(ActionLoss):
    """Heads trained by policy improvement (beyond the specification; docs/training.md): an M-step of the
    mixture ``pi_mix(a | s) = sum_e w(e | s) p_e(a | s)`` of every head toward an improved policy over actions.

    ``q(s_t, a)``, every action ``a``: the value (by ``value_readout``, as the search's leaf) of the imagined next
    state ``Z^{e_t}(h_t, one_hot(a))`` on the real steps ``0..t``. The improved policy is ``pi'(a) ~ pi_mix(a)
    exp(scale * adv(a) / std)``, ``adv = q - sum_a pi_mix q`` and ``std`` the batch's spread of ``adv``; each head
    fits it weighted by its responsibility ``r_e(a) = w(e) p_e(a) / pi_mix(a)``: ``-sum_{e,a} pi'(a) r_e(a) log
    p_e(a)``. The responsibilities keep the heads distinct (a head fits the actions it already proposes), and the
    loss is a bounded cross-entropy, not a value a head can chase. ``mixture``: ``w`` is the policy head's prior
    (``"prior"``) or uniform (``"uniform"``). Diagnostic ``imagined_value``: ``sum_a pi_mix(a) q(s, a)``.
    """

    def __init__(self, model: EmotionModel, *args, scale: float = 2.0, mixture: str = "prior", **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        if scale < 0 or mixture not in ("prior", "uniform"):
            raise ValueError(
                f"improvement: need scale >= 0 and mixture in ['prior', 'uniform'], got {scale}, {mixture!r}"
            )
        self.scale, self.mixture = scale, mixture

    @torch.no_grad()
    def action_values(self, encoding: Encoding, emotion: Tensor) -> Tensor:
        """``q(s_t, a)`` ``[B, L, A]``: the value of the imagined next state of each action (one stream)."""
        model, h = self.model, encoding.hidden
        n_actions = model.n_actions
        one_hot = torch.eye(n_actions, dtype=h.dtype, device=h.device)
        states = [model.dynamics(h, one_hot[a].expand(*h.shape[:-1], n_actions), emotion) for a in range(n_actions)]
        imagined = imagined_next(model, encoding, *states)
        values = []
        for hidden in imagined:
            policy = torch.softmax(model.policy_logits(hidden), -1) if self.value_readout == "policy" else None
            values.append(state_value(model.emotion_values(hidden), policy, self.value_readout))
        return torch.stack(values, dim=-1)

    def head_objective(
        self, batch: TensorDictBase, encoding: Encoding, hidden: Tensor, logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        log_p = torch.log_softmax(self.model.action_logits(hidden), dim=-1)  # [B, L, E, A], trainable
        with torch.no_grad():
            q = self.action_values(encoding.detach(), batch["emotion"].clamp(min=0))
            p = log_p.detach().exp()
            if self.mixture == "prior":
                w = torch.softmax(self.model.policy_logits(encoding.hidden.detach()), dim=-1)
            else:
                w = torch.full(p.shape[:-1], 1.0 / p.shape[-2], dtype=p.dtype, device=p.device)
            joint = w.unsqueeze(-1) * p  # [B, L, E, A]
            mix = joint.sum(-2).clamp_min(1e-12)  # pi_mix [B, L, A]
            advantage = q - (mix * q).sum(-1, keepdim=True)
            weight = step_weight(batch).to(q.dtype)
            spread = masked_mean(advantage.pow(2).mean(-1), weight).sqrt().clamp_min(1e-6)
            improved = torch.softmax(mix.log() + self.scale * advantage / spread, dim=-1)
            target = improved.unsqueeze(-2) * joint / mix.unsqueeze(-2)  # pi'(a) r_e(a), sums to 1 over (e, a)
        loss = -(target * log_p).sum((-1, -2))
        return loss, (mix * q).sum(-1)


ACTION_LOSSES: dict[str, type[ActionLoss]] = {
    "max_value": MaxValueActionLoss,
    "literal": LiteralActionLoss,
    "assigned": AssignedActionLoss,
    "improvement": ImprovementActionLoss,
}
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
