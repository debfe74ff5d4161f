"""Phase 2 with temperaments (beyond the specification; docs/training.md, "Temperaments"): emotions that differ in
what they value, each head learning the action its own values prefer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.losses.action import ActionLoss
from emotion_rl.losses.common import imagined_next, step_weight, terminated_steps
from emotion_rl.losses.targets import lambda_returns
from emotion_rl.model import EmotionModel, Encoding, PerEmotionMLP

__all__ = ["TemperamentActionLoss"]


class TemperamentActionLoss(ActionLoss):
    """Emotions as temperaments (Agent57's family of policies, with the search as the meta-controller): emotion
    ``e`` has a horizon ``gamma_e`` and a curiosity ``beta_e``. It learns a value of its own, ``W^e``, on the reward
    ``r + beta_e * n`` discounted by ``gamma_e`` (``n``: the model's surprise at the step, normalised), and its
    action head learns the action ``W^e`` prefers among the imagined next states of every action. The search still
    judges every emotion by the value heads ``V^e``, which phase 3 trains on the task's own return (one extrinsic
    judge): a curious or short-sighted emotion is chosen only where it pays in the task's terms.

    Per step ``t`` and emotion ``e`` (``W`` in units of the reward: scaled by ``1 - gamma_e``):

    - values: TD(lambda) targets ``y_t^e = (1 - gamma_e) r'_t + gamma_e ((1 - lam) W^e(s_{t+1}) + lam y_{t+1}^e)``
      with ``r'_t = r_t + beta_e n_t``, bootstrapped past the row's end from the imagined token of the next state
      (0 after a termination); ``(W^e(s_t) - y_t^e)^2`` summed over emotions;
    - heads: ``q^e(a) = W^e`` of the imagined next state ``Z^{e_t}(h_t, one_hot(a))`` (the dynamics head of the
      emotion taken), the target ``softmax(sharpness * (q^e - mean_a q^e) / spread)`` with ``spread`` the batch's
      spread of those differences, cross-entropy on head ``e``, every emotion at every step.

    ``W`` are heads of this loss (:attr:`temperament_values`, a per-emotion MLP on ``h_t``), trained by the phase-2
    optimizer with the action heads and saved with the agent; like the action heads they read ``h_t`` detached unless
    ``update_transformer``. ``initial_bias`` starts head ``e`` leaning to action ``e mod A`` (symmetry broken on
    purpose: heads that start alike and chase similar targets collapse onto one action).

    Args:
        model: the model whose action heads learn (given by the agent).
        horizons: ``gamma_e`` per emotion (``n_emotions`` numbers in [0, 1)), e.g. four horizons twice.
        curiosity: ``beta_e`` per emotion (default all 0: no novelty).
        lam: the TD(lambda) of the values.
        sharpness: how sharply a head's target prefers its values' best action.
        initial_bias: the logit head ``e`` gives action ``e mod A`` at initialisation (0: no lean).
        update_transformer: ``False`` (default): phase 2 moves the action heads and ``W`` only.
    """

    diagnostics = ("imagined_value", "temperament_value_loss", "temperament_head_loss")

    def __init__(
        self,
        model: EmotionModel,
        horizons: list[float],
        curiosity: list[float] | None = None,
        lam: float = 0.9,
        sharpness: float = 3.0,
        initial_bias: float = 1.0,
        update_transformer: bool = False,
    ) -> None:
        super().__init__(model, update_transformer)
        n_emotions = model.n_emotions
        curiosity = [0.0] * n_emotions if curiosity is None else list(curiosity)
        if len(horizons) != n_emotions or len(curiosity) != n_emotions:
            raise ValueError(
                f"TemperamentActionLoss: give one horizon and one curiosity per emotion ({n_emotions}), got "
                f"{len(horizons)} horizons and {len(curiosity)} curiosity weights"
            )
        if not all(0 <= g < 1 for g in horizons) or not all(b >= 0 for b in curiosity):
            raise ValueError("TemperamentActionLoss: horizons must be in [0, 1) and curiosity weights >= 0")
        if not 0 <= lam <= 1 or sharpness <= 0:
            raise ValueError("TemperamentActionLoss: need 0 <= lam <= 1 and sharpness > 0")
        self.lam, self.sharpness = lam, sharpness
        self.register_buffer("gammas", torch.tensor(horizons, dtype=torch.float32))
        self.register_buffer("betas", torch.tensor(curiosity, dtype=torch.float32))
        hidden = model.value_heads.w1.shape[-1]
        self.temperament_values = PerEmotionMLP(n_emotions, model.value_heads.w1.shape[1], hidden, 1)
        if initial_bias:
            with torch.no_grad():
                lean = torch.arange(n_emotions) % model.n_actions
                model.action_heads.b2[torch.arange(n_emotions), lean] += initial_bias

    def own_heads(self) -> PerEmotionMLP:
        return self.temperament_values

    def values(self, hidden: Tensor) -> Tensor:
        """``W^e`` ``[..., E]`` at hidden states ``[..., d]``."""
        return self.temperament_values.forward_shared(hidden).squeeze(-1)

    def per_step(self, batch: TensorDictBase, encoding: Encoding | None = None) -> TensorDict:
        encoding = self.encode(batch, encoding)
        hidden = encoding.hidden if self.update_transformer else encoding.hidden.detach()
        values = self.values(hidden)  # [B, L, E]
        with torch.no_grad():
            targets, novelty = self.value_targets(batch, encoding, values.detach())
            q, imagined = self.action_values(batch, encoding)  # [B, L, A, E], the imagined next states' W
        value_loss = (values - targets).pow(2).sum(-1)
        advantage = q - q.mean(-2, keepdim=True)
        weight = step_weight(batch).to(q.dtype)
        spread = ((advantage.pow(2).mean((-1, -2)) * weight).sum() / weight.sum().clamp(min=1)).sqrt()
        target = torch.softmax(self.sharpness * advantage / spread.clamp_min(1e-6), dim=-2)  # over actions
        log_p = torch.log_softmax(self.model.action_logits(hidden), dim=-1)  # [B, L, E, A]
        head_loss = -(target.transpose(-1, -2) * log_p).sum(-1).mean(-1)
        return TensorDict(
            loss=value_loss + head_loss,
            imagined_value=imagined,
            temperament_value_loss=value_loss.detach(),
            temperament_head_loss=head_loss.detach(),
            batch_size=batch.batch_size,
        )

    def novelty(self, batch: TensorDictBase, hidden: Tensor) -> Tensor:
        """The model's surprise at each step ``[B, L]``: ``||Z^{e_t}(h_t, a_t) - s_{t+1}||^2``, divided by its mean
        over the batch's steps and clipped at 5 (a scale-free bonus whatever the observation's units)."""
        taken = F.one_hot(batch["action"].clamp(min=0), self.model.n_actions).to(hidden.dtype)
        error = (self.model.dynamics(hidden, taken, batch["emotion"]) - batch["next_observation"]).pow(2).sum(-1)
        weight = step_weight(batch).to(error.dtype)
        mean = (error * weight).sum() / weight.sum().clamp(min=1)
        return (error / mean.clamp_min(1e-8)).clamp(max=5.0) * (weight > 0)

    def value_targets(
        self, batch: TensorDictBase, encoding: Encoding, values: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """TD(lambda) targets ``[B, L, E]`` of every ``W^e`` and the novelty ``[B, L]`` they read. ``values``: ``W``
        at the real steps ``[B, L, E]`` when the caller has them (no gradient needed), else computed here."""
        mask = batch["mask"]
        batch_size = mask.shape[0]
        last = (mask.long().sum(-1) - 1).clamp(min=0)
        rows = torch.arange(batch_size, device=mask.device)
        novelty = self.novelty(batch, encoding.hidden)
        reward = (batch["reward"].unsqueeze(-1) + self.betas * novelty.unsqueeze(-1)) * (1 - self.gammas)
        reward = reward * mask.unsqueeze(-1)
        (after,) = imagined_next(self.model, encoding, batch["next_observation"])
        ended = terminated_steps(batch)[rows, last].bool().unsqueeze(-1)
        boot = self.values(after[rows, last]).masked_fill(ended, 0.0)
        values = self.values(encoding.hidden) if values is None else values
        v_next = torch.cat([values, boot.new_zeros(batch_size, 1, boot.shape[-1])], 1)
        v_next[rows, last + 1] = boot  # [B, L + 1, E]: W(s_k); past a row's end its bootstrap
        return lambda_returns(reward, v_next, last, self.gammas, self.lam), novelty

    def action_values(self, batch: TensorDictBase, encoding: Encoding) -> tuple[Tensor, Tensor]:
        """``q^e(a)`` ``[B, L, A, E]``: every ``W^e`` at the imagined next state of each action (the dynamics head
        of the emotion taken), and the mean over actions and emotions ``[B, L]`` (the diagnostic)."""
        hidden, emotion = encoding.hidden, batch["emotion"].clamp(min=0)
        n_actions = self.model.n_actions
        one_hot = torch.eye(n_actions, dtype=hidden.dtype, device=hidden.device)
        states = [
            self.model.dynamics(hidden, one_hot[a].expand(*hidden.shape[:-1], -1), emotion) for a in range(n_actions)
        ]
        q = torch.stack([self.values(h) for h in imagined_next(self.model, encoding, *states)], dim=-2)
        return q, q.mean((-1, -2))
