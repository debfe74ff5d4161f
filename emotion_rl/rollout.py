"""Playing a policy in a batched env (TEMPORARY stand-in in the viz branch: the data branch owns this module).

:func:`play` is TorchRL's ``env.rollout`` over :func:`~emotion_rl.data.make_env`'s env, whose ``InitTracker`` and
``PreviousReward`` transforms give the policy ``is_init`` and ``prev_reward``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase

__all__ = ["play"]


@torch.no_grad()
def play(
    env: EnvBase,
    policy: Callable[[TensorDictBase], TensorDictBase],
    max_steps: int,
    callback: Callable[[EnvBase, TensorDictBase], object] | None = None,
    break_when_any_done: bool = True,
) -> TensorDictBase:
    """Reset ``env`` and play ``policy`` for up to ``max_steps`` steps: a TensorDict ``[n_envs, T]`` (TorchRL's
    rollout layout, the transition under ``"next"``). Sets ``policy.action_spec`` to the env's when it has one."""
    if hasattr(policy, "action_spec"):
        policy.action_spec = env.action_spec
    return env.rollout(int(max_steps), policy, callback=callback, break_when_any_done=break_when_any_done)
