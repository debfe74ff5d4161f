"""Phase 3's value targets as estimator objects (TorchRL's value-estimator pattern), and the EMA target network the
bootstrapped ones read (docs/training.md, "Value targets").

An estimator computes ``y_t`` and ``y_{t+1}`` ``[B, L]`` (value units) from a batch, the value loss's ``gamma`` and
``return_scale``, and the network it bootstraps from; :class:`~emotion_rl.losses.ValueLoss` holds one and owns the
network. Like TorchRL's ``ValueEstimatorBase`` (``torchrl.objectives.value``) an estimator is a separate object
the loss is given, but not a subclass of it: that base reads one value per state from a ``TensorDictModule``,
while here the value at a real step is the selected emotion's ``V^{e_k}`` and past a row's end the value of an
imagined token (spec 1.5), which need the model itself.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from emotion_rl.config import Configurable
from emotion_rl.losses.common import imagined_next, target_rewards, terminated_steps
from emotion_rl.model import EmotionModel

__all__ = ["MonteCarlo", "NStep", "TDLambda", "TargetNetwork", "ValueEstimator"]


class ValueEstimator(Configurable):
    """Value targets of phase 3 (spec 2.2.2 and beyond). A subclass implements :meth:`targets`.

    ``bootstraps``: whether the targets read a value network (the value loss then keeps an EMA target network);
    ``reads``: the batch keys read besides the history, the mask and the rewards. The rewards of every target are
    :func:`~emotion_rl.losses.common.target_rewards`: the env's reward plus the step's novelty bonus, if any.
    """

    bootstraps: ClassVar[bool] = False
    reads: ClassVar[tuple[str, ...]] = ()

    def targets(
        self, batch: TensorDictBase, network: EmotionModel, gamma: float, return_scale: float, with_next: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """``y_t`` and (``with_next``) ``y_{t+1}`` ``[B, L]`` in value units, no gradient. Past a row's last step
        ``y_{t+1}`` is 0 after a termination (:func:`terminated_steps`), else the row's bootstrap."""
        raise NotImplementedError


class MonteCarlo(ValueEstimator):
    """Spec 2.2.2: ``y_t = return_scale * G_t``, the actual discounted return (the batch's ``return``). Past a row's
    end without termination, ``y_{t+1} = (y_t - return_scale * r_t) / gamma`` (from ``G_t = r_t + gamma G_{t+1}``,
    so ``gamma`` must be the data's). Reads no network.

    Args:
        bootstrap_truncation: beyond the specification: ``G_t`` does not stop at a time limit. For an episode of
            ``T`` steps cut by the time limit, ``y_t = return_scale * (G_t + gamma^(T - t) V(s_T))``, the batch's
            ``bootstrap`` (the model's value of the state after the last step, computed when the episode was stored;
            0 after a termination); the row-end ``y_{t+1}`` after that last step is then ``V(s_T)``, not the 0 of a
            fall. False (default): the literal return (decision 19).
    """

    def __init__(self, bootstrap_truncation: bool = False) -> None:
        self.bootstrap_truncation = bool(bootstrap_truncation)
        self.reads = ("return", "bootstrap") if self.bootstrap_truncation else ("return",)

    def returns(self, batch: TensorDictBase) -> Tensor:
        """``G_t`` ``[B, L]`` in reward units: the stored ``return``, plus ``bootstrap`` with
        ``bootstrap_truncation``."""
        if not self.bootstrap_truncation:
            return batch["return"]
        if "bootstrap" not in batch.keys():
            raise ValueError(
                "MonteCarlo(bootstrap_truncation=True) needs the batch's 'bootstrap' key, which EmotionDataModule "
                "stores with every episode; add it to a hand-made batch, or set bootstrap_truncation: false"
            )
        return batch["return"] + batch["bootstrap"]

    @torch.no_grad()
    def targets(
        self, batch: TensorDictBase, network: EmotionModel, gamma: float, return_scale: float, with_next: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        if not with_next:
            return return_scale * self.returns(batch), None
        mask = batch["mask"]
        batch_size = mask.shape[0]
        last = (mask.long().sum(-1) - 1).clamp(min=0)  # [B]
        rows = torch.arange(batch_size, device=mask.device)
        reward = return_scale * target_rewards(batch) * mask
        ended = terminated_steps(batch)[rows, last].bool()
        y = return_scale * self.returns(batch)
        boot = ((y - reward) / gamma)[rows, last].masked_fill(ended, 0.0)
        return y, torch.cat([y[:, 1:], y.new_zeros(batch_size, 1)], 1).index_put((rows, last), boot)


class Bootstrapped(ValueEstimator):
    """Targets from rewards ``return_scale * r`` (``r`` the reward plus the novelty bonus) bootstrapped from
    ``network``: ``V^{e_k}(s_k)`` at a real step ``k``; after a row's last step 0 if it terminated, else the
    policy-weighted value ``sum_e pi(e | s) V^e(s)`` of the imagined token of its ``next_observation`` (a
    truncation, or the end of a window). A subclass combines the rewards and values (:meth:`combine`)."""

    bootstraps = True
    reads = ("next_observation", "done")

    @torch.no_grad()
    def targets(
        self, batch: TensorDictBase, network: EmotionModel, gamma: float, return_scale: float, with_next: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        mask = batch["mask"]
        batch_size = mask.shape[0]
        last = (mask.long().sum(-1) - 1).clamp(min=0)  # [B]
        rows = torch.arange(batch_size, device=mask.device)
        reward = return_scale * target_rewards(batch) * mask
        ended = terminated_steps(batch)[rows, last].bool()
        encoding = network.encode(batch)
        (imagined,) = imagined_next(network, encoding, batch["next_observation"])
        values = network.emotion_values(imagined)
        boot = (torch.softmax(network.policy_logits(imagined), -1) * values).sum(-1)[rows, last]
        boot = boot.masked_fill(ended, 0.0)
        real = network.emotion_values(encoding.hidden, batch["emotion"])
        v_next = torch.cat([real, boot.new_zeros(batch_size, 1)], 1)
        v_next[rows, last + 1] = boot  # v_next[:, k] = V(s_k), k = 0..L; past a row's end: its bootstrap
        y = self.combine(reward, v_next, last, gamma)
        return y, torch.cat([y[:, 1:], y.new_zeros(batch_size, 1)], 1).index_put((rows, last), boot)

    def combine(self, reward: Tensor, v_next: Tensor, last: Tensor, gamma: float) -> Tensor:
        """``y`` ``[B, L]`` from the scaled rewards ``[B, L]``, the values ``v_next`` ``[B, L + 1]`` (``V(s_k)``; at
        ``last + 1`` the bootstrap) and each row's last valid step ``last`` ``[B]``."""
        raise NotImplementedError


class NStep(Bootstrapped):
    """``y_t = sum_{k < m} gamma^k r_{t+k} + gamma^m V(s_{t+m})``, ``m = min(n, steps left in the row)``.

    Args:
        n: the number of real rewards before the bootstrap (1: the one-step TD target).
    """

    def __init__(self, n: int = 5) -> None:
        if n < 1:
            raise ValueError(f"NStep: n must be >= 1, got {n}")
        self.n = n

    def combine(self, reward: Tensor, v_next: Tensor, last: Tensor, gamma: float) -> Tensor:
        length = reward.shape[1]
        steps = torch.arange(length, device=reward.device)
        y, discount = torch.zeros_like(reward), torch.ones_like(reward)
        for k in range(self.n):
            inside = (steps + k).unsqueeze(0) <= last.unsqueeze(-1)
            y = y + torch.where(inside, discount * reward[:, (steps + k).clamp(max=length - 1)], 0.0)
            discount = torch.where(inside, discount * gamma, discount)
        return y + discount * v_next.gather(1, torch.minimum(steps + self.n, last.unsqueeze(-1) + 1))


class TDLambda(Bootstrapped):
    """``y_t = r_t + gamma ((1 - lam) V(s_{t+1}) + lam y_{t+1})``, backwards from each row's end (lam 0: the
    one-step target; lam 1: the return bootstrapped at the row's end only).

    Args:
        lam: the lambda of TD(lambda), in [0, 1].
    """

    def __init__(self, lam: float = 0.95) -> None:
        if not 0 <= lam <= 1:
            raise ValueError(f"TDLambda: lam must be in [0, 1], got {lam}")
        self.lam = lam

    def combine(self, reward: Tensor, v_next: Tensor, last: Tensor, gamma: float) -> Tensor:
        return lambda_returns(reward, v_next, last, gamma, self.lam)


def lambda_returns(reward: Tensor, v_next: Tensor, last: Tensor, gamma: float | Tensor, lam: float) -> Tensor:
    """TD(lambda) targets ``y_t = r_t + gamma ((1 - lam) V(s_{t+1}) + lam y_{t+1})``, backwards from each row's
    last valid step ``last`` ``[B]``, where ``y_{last+1}`` is the bootstrap ``v_next[:, last + 1]``.

    ``reward`` ``[B, L, *F]``, ``v_next`` ``[B, L + 1, *F]`` (``V(s_k)``), ``gamma`` a float or a tensor
    broadcasting against ``*F`` (one discount per emotion, as the temperaments use). Returns ``y`` ``[B, L, *F]``.
    """
    length = reward.shape[1]
    at_end = last.view(-1, *([1] * (reward.dim() - 2)))  # [B, 1...] against the trailing dims
    g, y = v_next[:, length], torch.zeros_like(reward)
    for t in range(length - 1, -1, -1):
        after = torch.where(t == at_end, v_next[:, t + 1], g)  # G_{t+1} past the end: the bootstrap
        g = reward[:, t] + gamma * ((1 - lam) * v_next[:, t + 1] + lam * after)
        y[:, t] = g
    return y


class TargetNetwork(nn.Module):
    """An exponential moving average of ``model`` that bootstrapped targets read: ``theta' <- theta' + tau (theta
    - theta')`` at each :meth:`step`. ``network`` is the copy (saved with its owner); the online model is not a
    submodule, so it is saved once, by the agent.

    TorchRL's ``SoftUpdate`` does the same for a loss module whose networks it converted to functional parameters;
    the four phase losses share one stateful model, so the copy is kept here.
    """

    def __init__(self, model: EmotionModel, tau: float) -> None:
        super().__init__()
        if not 0 < tau <= 1:
            raise ValueError(f"target_tau must be in (0, 1], got {tau}")
        self.tau = tau
        self.network = copy.deepcopy(model).requires_grad_(False)
        object.__setattr__(self, "online", model)

    @torch.no_grad()
    def step(self) -> None:
        """Move the copy a fraction ``tau`` toward the online model."""
        torch._foreach_lerp_(list(self.network.parameters()), list(self.online.parameters()), self.tau)
