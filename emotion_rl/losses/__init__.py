"""The four training losses (spec 2.2), one TorchRL loss module per phase, one file per phase (docs/training.md).

Each module holds the :class:`~emotion_rl.model.EmotionModel` and its phase's settings, reads a batch of real
histories ``[B, L]`` (``emotion_rl.history.EPISODE_KEYS``) and returns a TensorDict with its ``loss_<phase>`` (a
scalar: the weighted mean over steps) and diagnostics. The step weight is the batch's ``weight`` when present,
else its ``mask``. The stop-gradients of spec 2.2 are written at the call (``.detach()``, :func:`frozen`).
None needs :class:`~emotion_rl.agent.EmotionAgent`: any loop can ``loss(batch)["loss_value"].backward()``; the
agent takes each as a factory called with its model (``action_loss: class_path + init_args`` in a config).

    phase 1  DynamicsLoss         ||Z^e(h, stopgrad(A^e(h))) - s_next||^2      (spec 2.2.3, decision 8)
    phase 2  MaxValueActionLoss   -V(Z^e(stopgrad(h), A^e(h))), critic frozen  (section 4.3, decision 7)
             LiteralActionLoss    MSE(Z(h, A(h)), stopgrad(Z(h, A(h)))) = 0     (spec 2.2.4, decision 7)
             AssignedActionLoss   head e prefers action e mod A                (beyond the spec: coverage)
    phase 3  ValueLoss            (V^e(s) - y)^2, y from MonteCarlo (spec 2.2.2) or a ValueEstimator of one's own
    phase 4  PolicyLoss           -sum_e pi_MCTS(e) log pi(e | s)              (spec 2.2.1)
"""

from emotion_rl.losses.action import ActionLoss, AssignedActionLoss, LiteralActionLoss, MaxValueActionLoss
from emotion_rl.losses.common import (
    PhaseLoss,
    frozen,
    imagined_next,
    masked_mean,
    step_weight,
    target_rewards,
    terminated_steps,
)
from emotion_rl.losses.dynamics import DynamicsAction, DynamicsLoss
from emotion_rl.losses.policy import PolicyLoss
from emotion_rl.losses.targets import MonteCarlo, ValueEstimator
from emotion_rl.losses.value import ValueLoss

__all__ = [
    "ActionLoss",
    "AssignedActionLoss",
    "DynamicsAction",
    "DynamicsLoss",
    "LiteralActionLoss",
    "MaxValueActionLoss",
    "MonteCarlo",
    "PhaseLoss",
    "PolicyLoss",
    "ValueEstimator",
    "ValueLoss",
    "frozen",
    "imagined_next",
    "masked_mean",
    "step_weight",
    "target_rewards",
    "terminated_steps",
]
