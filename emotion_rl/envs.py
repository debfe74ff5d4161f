"""Environments: the batched TorchRL env the policy acts in, and what the model needs to know about it (decision 12)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gymnasium
import torch
from tensordict import TensorDictBase
from torchrl.envs import (
    Compose,
    EnvBase,
    GymEnv,
    InitTracker,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.transforms import Transform

__all__ = ["EnvInfo", "PreviousReward", "make_env", "probe_env"]


class PreviousReward(Transform):
    """Expose the previous step's reward as an observation, ``prev_reward`` (0 after a reset).

    The policy needs ``r_{t-1}`` at step t to complete history entry t-1 (decision 13); TorchRL's root tensordict
    holds only ``s_t``. ``next["reward"]`` is copied to ``next["prev_reward"]`` (an observation, so ``step_mdp``
    carries it to the next root); reset writes zeros (partial resets keep the other envs' values).
    """

    def __init__(self, in_key: str = "reward", out_key: str = "prev_reward") -> None:
        super().__init__(in_keys=[in_key], out_keys=[out_key])

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict.set(self.out_keys[0], next_tensordict.get(self.in_keys[0]).clone())
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        spec = self.parent.full_reward_spec[self.in_keys[0]]
        tensordict_reset.set(self.out_keys[0], spec.zero().to(tensordict_reset.device or spec.device))
        return tensordict_reset

    def transform_observation_spec(self, observation_spec):  # noqa: ANN001, ANN201 - TorchRL Composite spec
        observation_spec[self.out_keys[0]] = self.parent.full_reward_spec[self.in_keys[0]].clone()
        return observation_spec

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        raise NotImplementedError("PreviousReward only works inside an environment (TransformedEnv)")


@dataclass(frozen=True)
class EnvInfo:
    """What the model needs to know about an env (decision 12: dimensions come from the env)."""

    env_id: str
    obs_dim: int
    n_actions: int
    max_episode_steps: int


def probe_env(env_id: str, max_episode_steps: int | None = None) -> EnvInfo:
    """Check that ``env_id`` is supported and read its sizes and episode limit (one ``gymnasium.make``).

    Supported: a 1-D continuous ``Box`` observation, a ``Discrete`` action space starting at 0, and a bounded
    episode (``max_episode_steps`` given, or in the gymnasium registration). Raises ``ValueError`` otherwise.
    """
    try:
        registration = gymnasium.spec(env_id)
    except gymnasium.error.Error as err:
        raise ValueError(f"unknown gymnasium env id {env_id!r}: {err}") from err
    env = gymnasium.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    supported = "supported: a 1-D continuous Box observation space and a Discrete action space"
    box = gymnasium.spaces.Box
    if not (
        isinstance(obs_space, box) and len(obs_space.shape) == 1 and obs_space.dtype.kind == "f" and obs_space.shape[0]
    ):
        raise ValueError(f"env {env_id!r} has observation space {obs_space}; {supported}")
    if not isinstance(act_space, gymnasium.spaces.Discrete) or int(act_space.start) != 0:
        raise ValueError(f"env {env_id!r} has action space {act_space}; {supported} (starting at 0)")
    if max_episode_steps is not None:
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be a positive integer, got {max_episode_steps!r}")
        steps = max_episode_steps
    else:
        steps = registration.max_episode_steps
        if steps is None:
            raise ValueError(
                f"env {env_id!r} has no max_episode_steps in its gymnasium registration; pass max_episode_steps "
                "(episodes must be bounded so that a whole episode fits the model's context)"
            )
    return EnvInfo(
        env_id=env_id, obs_dim=int(obs_space.shape[0]), n_actions=int(act_space.n), max_episode_steps=int(steps)
    )


def make_env(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    max_episode_steps: int | None = None,
    categorical_action_encoding: bool = False,
) -> EnvBase:
    """A batched ``[num_envs]`` TorchRL env for ``env_id`` with the transforms the policy needs.

    ``SerialEnv`` of ``GymEnv`` (not gymnasium's vector env: see docs/data.md, "Environments"), transformed by
    ``InitTracker`` (``is_init``), :class:`PreviousReward` (``prev_reward``), ``StepCounter`` and ``RewardSum``.
    Actions are one-hot, or categorical with ``categorical_action_encoding``. Raises ``ValueError`` for
    unsupported envs (:func:`probe_env`).
    """
    probe_env(env_id, max_episode_steps)
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    make_kwargs = {"categorical_action_encoding": bool(categorical_action_encoding)}
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = max_episode_steps
    base = SerialEnv(num_envs, functools.partial(GymEnv, env_id, device=device, **make_kwargs), device=device)
    env = TransformedEnv(base, Compose(InitTracker(), PreviousReward(), StepCounter(), RewardSum()))
    if seed is not None:
        env.set_seed(int(seed))
    return env
