"""The four training losses (spec 2.2), one TorchRL loss module per phase, one file per phase (docs/training.md).

Each module holds the :class:`~emotion_rl.model.EmotionModel` and its phase's settings, reads a batch of real
histories ``[B, L]`` (``emotion_rl.history.EPISODE_KEYS``) and returns a TensorDict with its ``loss_<phase>`` (a
scalar: the weighted mean over steps) and diagnostics. The step weight is the batch's ``weight`` when present,
else its ``mask``. The stop-gradients of spec 2.2 are written at the call (``.detach()``, :func:`frozen`).
None needs :class:`~emotion_rl.agent.EmotionAgent`: any loop can ``loss(batch)["loss_value"].backward()``.

    phase 1  DynamicsLoss         ||Z^e(h, stopgrad(A^e(h))) - s_next||^2      (spec 2.2.3, decision 8)
    phase 2  MaxValueActionLoss   -V(Z^e(stopgrad(h), A^e(h))), critic frozen  (section 4.3, decision 7)
             LiteralActionLoss    MSE(Z(h, A(h)), stopgrad(Z(h, A(h)))) = 0     (spec 2.2.4, decision 7)
             AssignedActionLoss   head e prefers action e mod A                (beyond the spec: coverage)
             ImprovementActionLoss  M-step of the heads toward an improved policy (beyond the spec)
    phase 3  ValueLoss            (V^e(s) - return_scale * G)^2                (spec 2.2.2)
    phase 4  PolicyLoss           -sum_e pi_MCTS(e) log pi(e | s)              (spec 2.2.1)
"""

from emotion_rl.losses.action import (
    ACTION_LOSSES,
    ActionLoss,
    AssignedActionLoss,
    ImprovementActionLoss,
    LiteralActionLoss,
    MaxValueActionLoss,
    action_loss_class,
    head_information,
)
from emotion_rl.losses.common import PhaseLoss, frozen, imagined_next, masked_mean, step_weight, terminated_steps
from emotion_rl.losses.dynamics import DynamicsAction, DynamicsLoss
from emotion_rl.losses.policy import PolicyLoss
from emotion_rl.losses.value import ValueLoss, ValueTarget

__all__ = [
    "ACTION_LOSSES",
    "ActionLoss",
    "AssignedActionLoss",
    "DynamicsAction",
    "DynamicsLoss",
    "ImprovementActionLoss",
    "LiteralActionLoss",
    "MaxValueActionLoss",
    "PhaseLoss",
    "PolicyLoss",
    "ValueLoss",
    "ValueTarget",
    "action_loss_class",
    "frozen",
    "head_information",
    "imagined_next",
    "masked_mean",
    "step_weight",
    "terminated_steps",
]
