"""Greedy play of an agent, or of any planner on its model, on fixed start states (spec 5: the greedy policy).

An evaluation plays ``episodes`` envs at once, one episode each (its first: :func:`emotion_rl.data.rollout.
first_episodes`), the envs seeded by ``seed``: the same ``seed`` gives the same start states to every planner and
every greedy decision compared on it. The env is described by a settings dict, ``{"env_id", "time_limit",
"env_kwargs", "env_wrappers", "env_factory"}`` (:func:`env_settings`), read from a datamodule or a checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from emotion_rl.data.envs import make_env, probe_env
from emotion_rl.data.rollout import evaluate_policy, first_episodes, play
from emotion_rl.policy import EmotionPolicy

__all__ = [
    "ENV_OPTIONS",
    "Played",
    "checkpoint_settings",
    "datamodule_settings",
    "display_path",
    "env_settings",
    "episode_limit",
    "evaluate",
    "play_greedy",
]

ENV_OPTIONS = ("env_kwargs", "env_wrappers", "env_factory")
"""The datamodule settings, besides ``env_id`` and ``time_limit``, that make its env (EmotionDataModule)."""


def env_settings(env_id: str, time_limit: int | None = None, **options: Any) -> dict:  # noqa: ANN401
    """The settings of ``env_id``: ``time_limit`` (None: the env's registered limit) and the env options
    (:data:`ENV_OPTIONS`; unknown ones are refused, missing ones are None)."""
    unknown = set(options) - set(ENV_OPTIONS)
    if unknown:
        raise TypeError(f"env_settings: unknown env options {sorted(unknown)}; known: {list(ENV_OPTIONS)}")
    return {"env_id": str(env_id), "time_limit": time_limit, **{key: options.get(key) for key in ENV_OPTIONS}}


def datamodule_settings(data: Any) -> dict:  # noqa: ANN401 - an EmotionDataModule
    """The settings of the env an :class:`~emotion_rl.EmotionDataModule` trains on (its hyperparameters)."""
    hparams = data.hparams
    return env_settings(hparams.env_id, hparams.get("time_limit"), **{key: hparams.get(key) for key in ENV_OPTIONS})


def display_path(path: str | os.PathLike, root: Path | None = None) -> str:
    """A checkpoint path for a report: as given when relative, else relative to the working directory or ``root``
    when inside one, else its file name (a report names no machine path)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for base in (Path.cwd(), *([root] if root is not None else [])):
        if path.resolve().is_relative_to(base.resolve()):
            return path.resolve().relative_to(base.resolve()).as_posix()
    return path.name


def checkpoint_settings(ckpt_path: str | os.PathLike, env_id: str | None, time_limit: int | None) -> dict:
    """The settings from ``env_id`` / ``time_limit`` (None: not given) and the checkpoint's
    ``datamodule_hyper_parameters``, whose env options apply only to its own env. Raises ``ValueError`` when neither
    names an env (a weights-only checkpoint needs ``env_id``)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if env_id is None:
        env_id = data.get("env_id")
        if env_id is None:
            raise ValueError(
                f"{display_path(ckpt_path)} has no datamodule section (a weights-only checkpoint): pass --env-id"
            )
    same_env = env_id == data.get("env_id")
    options = {key: data.get(key) if same_env else None for key in ENV_OPTIONS}
    if time_limit is None:
        time_limit = data.get("time_limit") if same_env else None
    return env_settings(env_id, time_limit, **options)


def episode_limit(settings: Mapping[str, Any]) -> int:
    """Steps an episode of ``settings``' env lasts at most: its ``time_limit``, else the env's registered limit."""
    options = {key: settings.get(key) for key in ENV_OPTIONS}
    return int(probe_env(settings["env_id"], settings.get("time_limit"), **options).max_episode_steps)


def make_envs(settings: Mapping[str, Any], episodes: int, seed: int) -> EnvBase:
    """``episodes`` envs of ``settings``, one per episode, seeded by ``seed`` (the fixed start states)."""
    options = {key: settings.get(key) for key in ENV_OPTIONS}
    return make_env(settings["env_id"], episodes, seed=seed, max_episode_steps=settings.get("time_limit"), **options)


@dataclass
class Played:
    """A greedy rollout: ``steps`` ``[n, T]`` (CPU), ``first`` bool ``[n, T]`` (each env's first episode), the
    policy that acted (a wrapper's state is read after play), and the seconds the play took."""

    steps: TensorDictBase
    first: torch.Tensor
    acting: Any
    seconds: float

    @property
    def returns(self) -> torch.Tensor:
        """float64 ``[n]``: each first episode's undiscounted return."""
        reward = self.steps.get(("next", "reward")).reshape(self.steps.batch_size).to(torch.float64)
        return torch.where(self.first, reward, torch.zeros_like(reward)).sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        """long ``[n]``: each first episode's steps."""
        return self.first.sum(-1)


def play_greedy(
    model: Any,  # noqa: ANN401 - an EmotionModel
    planner: Any,  # noqa: ANN401 - any planner of the EmotionPolicy contract
    settings: Mapping[str, Any],
    episodes: int,
    seed: int,
    decision: str = "emotion",
    wrap: Callable[[EmotionPolicy, EnvBase], Any] | None = None,
) -> Played:
    """Play ``episodes`` greedy episodes of ``planner`` over ``model`` (one env each, seeded by ``seed``; the search
    draws on a generator seeded by ``seed``, only under random options) acting by the greedy ``decision``
    (``emotion_rl.decision``), until every env's first episode has ended or the episode limit. ``wrap(policy, env)``
    returns the callable that acts instead of the policy (a recorder of what it sees)."""
    limit = episode_limit(settings)
    env = make_envs(settings, episodes, seed)
    generator = torch.Generator().manual_seed(seed)
    policy = EmotionPolicy(model, planner, greedy=True, generator=generator, greedy_decision=decision)
    acting = policy if wrap is None else wrap(policy, env)
    start = time.perf_counter()
    try:
        steps = play(env, acting, limit, break_when_any_done=False, break_when_all_done=True)
    finally:
        env.close()
    seconds = time.perf_counter() - start
    steps, first = first_episodes(steps)
    return Played(steps, first, acting, seconds)


def evaluate(
    agent: Any,  # noqa: ANN401 - an EmotionAgent
    settings: Mapping[str, Any],
    episodes: int,
    seed: int,
    planner: Any = None,  # noqa: ANN401
    decision: str | None = None,
) -> TensorDict:
    """``agent`` on ``episodes`` greedy episodes from the start states of ``seed``: its own planner (or ``planner``:
    :class:`~emotion_rl.PriorPlanner`, :class:`~emotion_rl.FixedEmotionPlanner`, ...) over its model, acting
    through the chosen emotion (or by ``decision``). Returns :func:`emotion_rl.data.rollout.evaluate_policy`'s
    TensorDict (``episode_return`` ``[n]``, ``episode_length``, ``terminated``, ``truncated``, ``final_observation``).
    """
    decision = decision or "emotion"
    generator = torch.Generator().manual_seed(seed)
    planner = agent.planner if planner is None else planner
    policy = EmotionPolicy(agent.model, planner, greedy=True, generator=generator, greedy_decision=decision)
    limit = episode_limit(settings)
    env = make_envs(settings, episodes, seed)
    try:
        return evaluate_policy(env, policy, limit)
    finally:
        env.close()
