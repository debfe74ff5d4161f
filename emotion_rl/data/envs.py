"""Environments: the batched TorchRL env the policy acts in, and what the model needs to know about it (decision 12)."""

from __future__ import annotations

import functools
import importlib
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import torch
from tensordict import TensorDictBase
from torchrl.envs import (
    Compose,
    EnvBase,
    GymEnv,
    GymWrapper,
    InitTracker,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.transforms import Transform

__all__ = [
    "EnvConstructionError",
    "EnvInfo",
    "FiniteCheck",
    "MissingDependencyError",
    "NonFiniteError",
    "PreviousReward",
    "make_env",
    "probe_env",
]


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


class NonFiniteError(ValueError):
    """An environment returned a NaN or infinite observation or reward: one line naming the env and the step."""


class FiniteCheck(Transform):
    """Refuse non-finite ``observation`` and ``reward`` where the env returns them, before anything reads them.

    A NaN observation would reach the planner (and fail far away, in an emotion draw), a NaN reward the replay's
    returns and then every value target. This transform sits in the env (:func:`make_env`), so the collector's
    policy, the replay and the evaluation never see such a value: the step that produced it raises
    :class:`NonFiniteError`, naming ``env_id``, the step of the episode (``step_count`` of a ``StepCounter`` placed
    before this transform; 0 at reset) and which of the batched envs.
    """

    def __init__(self, env_id: str, keys: Sequence[str] = ("observation", "reward")) -> None:
        super().__init__(in_keys=list(keys), out_keys=list(keys))
        self.env_id = env_id

    def _check(self, tensordict: TensorDictBase, at_reset: bool) -> None:
        for key in self.in_keys:
            value = tensordict.get(key, None)
            if value is None or bool(torch.isfinite(value).all()):
                continue
            rows = value.reshape(tensordict.batch_size.numel(), -1)  # one row per env of the batch
            env = int((~torch.isfinite(rows).all(-1)).nonzero()[0, 0])
            counts = tensordict.get("step_count", None)
            step = 0 if at_reset or counts is None else int(counts.reshape(rows.shape[0], -1)[env, 0])
            which = f" (env {env} of {rows.shape[0]})" if rows.shape[0] > 1 else ""
            raise NonFiniteError(
                f"env {self.env_id!r} returned a non-finite {key} {_shown(rows[env])} at step {step} of an "
                f"episode{which}; refused before the planner or the replay read it. Fix the environment, or wrap it "
                "(data.env_wrappers) to replace such values"
            )

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        self._check(next_tensordict, at_reset=False)
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        self._check(tensordict_reset, at_reset=True)
        return tensordict_reset

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._check(tensordict, at_reset=False)  # also usable on stored data
        return tensordict


def _shown(row: torch.Tensor) -> str:
    """One env's value for a one-line message: ``[0.1, nan]`` (at most 8 entries), or ``nan`` for a single one."""
    flat = row.reshape(-1).tolist()
    text = ", ".join(f"{v:.4g}" for v in flat[:8]) + (", ..." if len(flat) > 8 else "")
    return text if len(flat) == 1 else f"[{text}]"


class MissingDependencyError(ValueError):
    """An environment needs an optional dependency: one line naming the extra that installs it."""


EXTRAS = {"box2d": "box2d"}
"""Words of gymnasium's ``DependencyNotInstalled`` message -> the emotion_rl extra that installs the package."""

SUPPORTED = "supported: a 1-D continuous Box observation space and a Discrete action space"


@dataclass(frozen=True)
class EnvInfo:
    """What the model needs to know about an env (decision 12: dimensions come from the env)."""

    env_id: str
    obs_dim: int
    n_actions: int
    max_episode_steps: int


def _import(path: str) -> Any:  # noqa: ANN401 - a class or a function
    """``"pkg.module:attr"`` or ``"pkg.module.attr"`` -> the object."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from err


def _gym_id(env_id: str) -> str:
    """Gymnasium's ``module:EnvId`` form: import ``module`` (it registers the env), return ``EnvId``."""
    if ":" not in env_id:
        return env_id
    module, _, name = env_id.partition(":")
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"env id {env_id!r}: cannot import {module!r} ({err})") from err
    return name


def _missing(env_id: str, err: Exception) -> MissingDependencyError:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    for word, extra in EXTRAS.items():
        if word in text.lower():
            return MissingDependencyError(
                f'env {env_id!r} needs the {extra!r} extra: pip install -e ".[{extra}]" (or pip install {extra})'
            )
    return MissingDependencyError(f"env {env_id!r} needs a package that is not installed: {text}")


class EnvConstructionError(ValueError):
    """Making an environment failed: one line naming the env, the cause and, where it is known, the fix."""


def _cause(err: BaseException) -> BaseException:
    """The exception that started it: gymnasium's ``make`` re-raises a constructor's error with a longer message."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _construction_error(env_id: str, stage: str, err: Exception, env_kwargs: dict) -> EnvConstructionError:
    """``env 'X' could not be made (stage): TypeError: ...; fix`` in one line (the fix for argument mismatches)."""
    cause = _cause(err)
    text = (str(cause).splitlines() or [""])[0] or type(cause).__name__
    args = f"env_kwargs {env_kwargs} (data.env_kwargs)"
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", text)
    missing = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: (.+)$", text)
    if isinstance(cause, TypeError) and unexpected:
        fix = f"remove {unexpected.group(1)!r} from {args}, or accept it in the constructor"
    elif isinstance(cause, TypeError) and re.search(r"takes no (keyword )?arguments", text) and env_kwargs:
        fix = f"remove {args}"
    elif isinstance(cause, TypeError) and missing:
        fix = f"pass {missing.group(1)} in {args}"
    else:
        frames = traceback.extract_tb(cause.__traceback__)
        fix = f"raised at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return EnvConstructionError(
        f"env {env_id!r} could not be made ({stage}): {type(cause).__name__}: {text}" + (f"; {fix}" if fix else "")
    )


def _base_env(
    env_id: str,
    device: str | torch.device = "cpu",
    max_episode_steps: int | None = None,
    categorical_action_encoding: bool = False,
    env_kwargs: dict | None = None,
    env_wrappers: Sequence[str] | None = None,
    env_factory: str | None = None,
) -> EnvBase:
    """One unbatched TorchRL env: ``env_factory(**env_kwargs)``, or gymnasium's ``env_id`` made with ``env_kwargs``
    and wrapped by ``env_wrappers`` (gymnasium wrapper classes, innermost first).

    Any error while making it is re-raised as one line, :class:`EnvConstructionError` (:class:`MissingDependencyError`
    for a missing optional package). A constructor that takes no arguments at all is made by ``gymnasium.make`` and
    wrapped: TorchRL's ``GymEnv`` passes it ``frameskip`` to probe for frame skipping, which it refuses.
    """
    kwargs = dict(env_kwargs or {})
    user_kwargs = dict(kwargs)
    if env_factory is not None:
        factory = _import(env_factory)
        try:
            env = factory(**kwargs)
        except Exception as err:  # noqa: BLE001 - the user's factory: any error becomes one line
            raise _construction_error(env_factory, "env_factory", err, user_kwargs) from None
        if not isinstance(env, EnvBase):
            raise ValueError(f"env_factory {env_factory!r} returned a {type(env).__name__}, not a TorchRL EnvBase")
        if env.batch_size != torch.Size([]):
            raise ValueError(
                f"env_factory {env_factory!r} returned a batched env {tuple(env.batch_size)}; return one env"
            )
        return env
    gym_id = _gym_id(env_id)
    wrappers = [(path, _import(path)) for path in env_wrappers or []]
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    encoding = {"categorical_action_encoding": bool(categorical_action_encoding), "device": device}
    stage = "gymnasium.make"
    try:
        if not wrappers:
            try:
                return GymEnv(gym_id, **encoding, **kwargs)
            except TypeError:  # e.g. a constructor without arguments refusing GymEnv's frameskip probe
                return GymWrapper(gymnasium.make(gym_id, **{"disable_env_checker": True, **kwargs}), **encoding)
        env = gymnasium.make(gym_id, **kwargs)
        for path, wrapper in wrappers:
            stage = f"wrapper {path}"
            env = wrapper(env)
        stage = "GymWrapper"
        return GymWrapper(env, **encoding)
    except gymnasium.error.DependencyNotInstalled as err:
        raise _missing(env_id, err) from None
    except Exception as err:  # noqa: BLE001 - the user's env or wrapper: any error becomes one line
        raise _construction_error(env_id, stage, err, user_kwargs) from None


def _time_limit(env: EnvBase) -> int | None:
    """``max_steps`` of a ``StepCounter`` among the env's transforms, if any."""
    transforms = env.transform if isinstance(env, TransformedEnv) else []
    for transform in transforms if isinstance(transforms, Compose) else [transforms]:
        if isinstance(transform, StepCounter) and transform.max_steps is not None:
            return int(transform.max_steps)
    return None


def probe_env(
    env_id: str,
    max_episode_steps: int | None = None,
    env_kwargs: dict | None = None,
    env_wrappers: Sequence[str] | None = None,
    env_factory: str | None = None,
) -> EnvInfo:
    """Check that the env is supported and read its sizes from its TorchRL specs and its episode limit.

    Supported: a 1-D float ``observation``, a one-hot or categorical action over ``n`` actions (from 0), and a bounded
    episode: ``max_episode_steps`` given, else the gymnasium registration's (or ``env_kwargs``'), else a
    ``StepCounter(max_steps)`` of a factory's env. Raises ``ValueError`` otherwise (:class:`MissingDependencyError`
    for a missing optional package).
    """
    name = env_factory or env_id
    if max_episode_steps is not None and (
        isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1
    ):
        raise ValueError(f"max_episode_steps must be a positive integer, got {max_episode_steps!r}")
    registered = None
    if env_factory is None:
        try:
            registered = gymnasium.spec(_gym_id(env_id)).max_episode_steps
        except gymnasium.error.Error as err:
            raise ValueError(f"unknown gymnasium env id {env_id!r}: {err}") from err
        registered = (env_kwargs or {}).get("max_episode_steps", registered)
    env = _base_env(env_id, env_kwargs=env_kwargs, env_wrappers=env_wrappers, env_factory=env_factory)
    try:
        obs_spec = env.observation_spec.get("observation", None)
        action_spec = env.action_spec
        gym_env = getattr(env, "_env", None)  # a gymnasium env's spaces name the refusal in its own terms
        obs_space, action_space = getattr(gym_env, "observation_space", None), getattr(gym_env, "action_space", None)
        start = getattr(action_space, "start", 0)
        limit = _time_limit(env) if env_factory is not None else registered
    finally:
        env.close()
    if obs_spec is None or len(obs_spec.shape) != 1 or not obs_spec.dtype.is_floating_point or not obs_spec.shape[0]:
        shown = "none" if obs_spec is None else f"{tuple(obs_spec.shape)} {obs_spec.dtype}"
        shown = f"space {obs_space}" if obs_space is not None else shown
        raise ValueError(f"env {name!r} has observation {shown}; {SUPPORTED} (a 1-D continuous Box observation)")
    n_actions = getattr(action_spec.space, "n", None)
    if n_actions is None or int(start) != 0 or action_spec.shape[-1:] not in (torch.Size([n_actions]), torch.Size([])):
        shown = f"space {action_space}" if action_space is not None else f"spec {type(action_spec).__name__}"
        raise ValueError(f"env {name!r} has action {shown}; {SUPPORTED} (starting at 0)")
    steps = max_episode_steps if max_episode_steps is not None else limit
    if steps is None:
        raise ValueError(
            f"env {name!r} has no time limit (max_episode_steps in its gymnasium registration, or a StepCounter with "
            "max_steps); pass max_episode_steps (data.time_limit): episodes must be bounded so that a whole episode "
            "fits the model's context"
        )
    return EnvInfo(env_id=name, obs_dim=int(obs_spec.shape[0]), n_actions=int(n_actions), max_episode_steps=int(steps))


def make_env(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    max_episode_steps: int | None = None,
    categorical_action_encoding: bool = False,
    env_kwargs: dict | None = None,
    env_wrappers: Sequence[str] | None = None,
    env_factory: str | None = None,
) -> EnvBase:
    """A batched ``[num_envs]`` TorchRL env with the transforms the policy needs.

    ``SerialEnv`` of gymnasium's ``env_id`` (``GymEnv``, with ``env_kwargs`` and ``env_wrappers``; ``module:EnvId``
    accepted) or of ``env_factory(**env_kwargs)`` (a ``"pkg.module:function"`` returning an unbatched TorchRL
    ``EnvBase``); not gymnasium's vector env (docs/data.md, "Environments"). Transformed by ``InitTracker``
    (``is_init``), :class:`PreviousReward` (``prev_reward``), ``StepCounter`` (with ``max_episode_steps`` as its
    ``max_steps`` for a factory's env: the time limit), :class:`FiniteCheck` (a NaN or infinite observation or
    reward raises :class:`NonFiniteError`) and ``RewardSum``. Actions are one-hot, or categorical with
    ``categorical_action_encoding``. Raises ``ValueError`` for unsupported envs (:func:`probe_env`).
    """
    options = {"env_kwargs": env_kwargs, "env_wrappers": env_wrappers, "env_factory": env_factory}
    info = probe_env(env_id, max_episode_steps, **options)
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    make_one = functools.partial(
        _base_env,
        env_id,
        device=device,
        max_episode_steps=max_episode_steps,
        categorical_action_encoding=categorical_action_encoding,
        **options,
    )
    base = SerialEnv(num_envs, make_one, device=device)
    counter = StepCounter(max_steps=info.max_episode_steps) if env_factory is not None else StepCounter()
    check = FiniteCheck(info.env_id)  # after the counter: it names the step
    env = TransformedEnv(base, Compose(InitTracker(), PreviousReward(), counter, check, RewardSum()))
    if seed is not None:
        env.set_seed(int(seed))
    return env
