"""Playing a policy in an env: TorchRL's ``env.rollout``, and the greedy evaluation built on it (spec 5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

__all__ = ["evaluate_policy", "first_episodes", "play"]


@torch.no_grad()
def play(
    env: EnvBase,
    policy: Callable[[TensorDictBase], TensorDictBase],
    max_steps: int,
    callback: Callable[[EnvBase, TensorDictBase], Any] | None = None,
    break_when_any_done: bool = True,
    break_when_all_done: bool = False,
) -> TensorDict:
    """Reset ``env`` and play ``policy`` for up to ``max_steps`` steps: ``env.rollout``'s ``[n_envs, T]``.

    ``break_when_any_done``: stop when an env's episode ends (else finished envs are reset and play on);
    ``break_when_all_done`` (with ``break_when_any_done=False``): finished envs wait, stop when all have finished.
    ``callback(env, td)`` runs after every step but the last (TorchRL's). Sets ``policy.action_spec`` to the env's
    when the policy has one, so it writes actions in the env's encoding.
    """
    if hasattr(policy, "action_spec"):
        policy.action_spec = env.action_spec
    return env.rollout(
        int(max_steps),
        policy,
        callback,
        break_when_any_done=break_when_any_done,
        break_when_all_done=break_when_all_done,
    )


def first_episodes(steps: TensorDictBase) -> tuple[TensorDictBase, torch.Tensor]:
    """Each env's first episode of a rollout: ``steps`` (``env.rollout``'s ``[*batch, T]``) as ``[n, T]`` on the CPU,
    and bool ``[n, T]`` True at the steps of each env's first episode (up to and including its first ``done``; all
    of them where none ended). The one place that cuts first episodes: evaluations count only those (one start
    state per env), whatever a finished env played after its reset."""
    steps = steps.reshape(-1, steps.batch_size[-1]).to("cpu")
    done = steps.get(("next", "done")).reshape(steps.batch_size).long()
    return steps, (done.cumsum(-1) - done) == 0


def evaluate_policy(env: EnvBase, policy: Callable[[TensorDictBase], TensorDictBase], max_steps: int) -> TensorDict:
    """Play the first episode of every env of ``env`` (batch ``[n]``) for up to ``max_steps`` steps.

    Returns TensorDict ``[]`` with ``episode_return`` float ``[n]`` (undiscounted, summed in float64 step by step),
    ``episode_length`` long ``[n]``, and how each episode ended: ``terminated`` and ``truncated`` bool ``[n]`` (both
    False for an episode ``max_steps`` cut) and ``final_observation`` ``[n, *obs]`` (``s_T``, what
    :class:`~emotion_rl.data.endings.EpisodeEndings` reads the environment's own reasons from).
    """
    steps, first = first_episodes(play(env, policy, max_steps, break_when_any_done=False, break_when_all_done=True))
    reward = steps.get(("next", "reward")).reshape(steps.batch_size).to(torch.float64)
    returns = torch.where(first, reward, torch.zeros_like(reward)).cumsum(-1)[:, -1]
    length = first.sum(-1)
    rows, last = torch.arange(length.shape[0]), length - 1
    ending = {}
    for key in ("terminated", "truncated"):
        flag = steps.get(("next", key), None)
        ending[key] = (
            torch.zeros_like(length, dtype=torch.bool) if flag is None else flag.reshape(steps.batch_size)[rows, last]
        )
    final = steps.get(("next", "observation"))[rows, last]
    result = {"episode_return": returns.float(), "episode_length": length, **ending, "final_observation": final}
    return TensorDict(result, batch_size=[])
