"""Phase 3's value targets as estimator objects (TorchRL's value-estimator pattern; docs/training.md, "Value
targets").

An estimator computes ``y_t`` and ``y_{t+1}`` ``[B, L]`` (value units) from a batch, the value loss's ``gamma`` and
``return_scale``, and the model the loss trains; :class:`~emotion_rl.losses.ValueLoss` holds one. An estimator that
needs values stored with the episodes (``MonteCarlo(bootstrap_truncation=True)``: the value after a time-limit cut)
computes them itself when the data side stores episodes (:meth:`ValueEstimator.bootstrap`); one that does not ask
costs nothing there. Like TorchRL's ``ValueEstimatorBase`` (``torchrl.objectives.value``) an estimator is a separate
object the loss is given, but not a subclass of it: that base reads one value per state from a ``TensorDictModule``,
while here a value at a real step is the selected emotion's ``V^{e_k}`` and past a row's end the value of an imagined
token (spec 1.5), which need the model itself.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from tensordict import TensorDictBase
from torch import Tensor

from emotion_rl.config import Configurable
from emotion_rl.history import last_index, windowed_history
from emotion_rl.losses.common import target_rewards, terminated_steps
from emotion_rl.model import EmotionModel, evaluating

__all__ = ["MonteCarlo", "ValueEstimator", "value_after"]


def value_after(episodes: TensorDictBase, network: EmotionModel) -> Tensor:
    """The value of the state after each episode's last step, ``[K]`` in value units (on the network's device and
    dtype, no gradient), for episodes ``[K, L]`` (right-padded, ``mask``): read as the search reads a state, the
    real history (the last ``context_window`` steps, spec 1.3, decision 15;
    :func:`~emotion_rl.history.windowed_history`) plus that state as the imagined token (spec 1.5), valued by
    :meth:`EmotionModel.state_value` (the mean of the ``E`` values, spec 1.4's leaf), in eval mode."""
    last = last_index(episodes["mask"])
    window = min(network.context_window, episodes.batch_size[1])
    with evaluating(network) as (device, dtype):
        history = windowed_history(episodes, last, window).to(device)
        history = history.apply(lambda x: x.to(dtype) if x.is_floating_point() else x)
        after = episodes["next_observation"][torch.arange(last.numel()), last].to(device, dtype)
        return network.evaluate(history, imagined_observation=after)["value"]


class ValueEstimator(Configurable):
    """Value targets of phase 3 (spec 2.2.2 and beyond). A subclass implements :meth:`targets`.

    ``reads``: the batch keys read besides the history, the mask and the rewards. The rewards of every target are
    :func:`~emotion_rl.losses.common.target_rewards`: the env's reward plus the step's novelty bonus, if any.
    """

    reads: ClassVar[tuple[str, ...]] = ()

    def targets(
        self, batch: TensorDictBase, network: EmotionModel, gamma: float, return_scale: float, with_next: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """``y_t`` and (``with_next``) ``y_{t+1}`` ``[B, L]`` in value units, no gradient. Past a row's last step
        ``y_{t+1}`` is 0 after a termination (:func:`terminated_steps`), else the row's bootstrap. ``network``: the
        model the value loss trains, for a target that reads values (:class:`MonteCarlo` does not)."""
        raise NotImplementedError

    def bootstrap(self, episodes: TensorDictBase, network: EmotionModel, return_scale: float) -> Tensor | None:
        """The values this estimator asks to store with episodes ``[K, L]`` cut by the time limit, when they are
        stored: ``[K]`` in reward units (the data side discounts them into each step's ``bootstrap``; docs/data.md,
        "The value after a truncation"), or ``None``: it asks for none and nothing is computed (the default)."""
        return None


class MonteCarlo(ValueEstimator):
    """Spec 2.2.2: ``y_t = return_scale * G_t``, the actual discounted return (the batch's ``return``). Past a row's
    end without termination, ``y_{t+1} = (y_t - return_scale * r_t) / gamma`` (from ``G_t = r_t + gamma G_{t+1}``,
    so ``gamma`` must be the data's). Reads no network.

    Args:
        bootstrap_truncation: beyond the specification: ``G_t`` does not stop at a time limit. For an episode of
            ``T`` steps cut by the time limit, ``y_t = return_scale * (G_t + gamma^(T - t) V(s_T))``, the batch's
            ``bootstrap`` (0 after a termination); the row-end ``y_{t+1}`` after that last step is then ``V(s_T)``,
            not the 0 of a fall. ``V(s_T)`` is the network's value of the state after the last step
            (:func:`value_after`), which :meth:`bootstrap` computes when the episode is stored. False (default): the
            literal return (decision 19), and nothing is valued when episodes are stored.
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

    def bootstrap(self, episodes: TensorDictBase, network: EmotionModel, return_scale: float) -> Tensor | None:
        """``V(s_T)`` ``[K]`` in reward units (float32, CPU): :func:`value_after` divided by ``return_scale``, which
        :meth:`targets` multiplies back with the return it joins, with ``bootstrap_truncation``; else ``None``."""
        if not self.bootstrap_truncation:
            return None
        return (value_after(episodes, network) / return_scale).to("cpu", torch.float32)

    @torch.no_grad()
    def targets(
        self, batch: TensorDictBase, network: EmotionModel, gamma: float, return_scale: float, with_next: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        if not with_next:
            return return_scale * self.returns(batch), None
        mask = batch["mask"]
        batch_size = mask.shape[0]
        last = last_index(mask)  # [B]
        rows = torch.arange(batch_size, device=mask.device)
        reward = return_scale * target_rewards(batch) * mask
        ended = terminated_steps(batch)[rows, last].bool()
        y = return_scale * self.returns(batch)
        boot = ((y - reward) / gamma)[rows, last].masked_fill(ended, 0.0)
        return y, torch.cat([y[:, 1:], y.new_zeros(batch_size, 1)], 1).index_put((rows, last), boot)
