"""Load a trained agent and act with it in a plain gymnasium loop, in stable-baselines3's convention (spec 5, steps
1-3; docs/api.md, "Load and act").

    agent = EmotionAgent.load("models/cartpole.ckpt")
    action, state = agent.predict(observation, state, episode_start, reward=reward)

:class:`LoadAndPredict` is a mixin of :class:`~emotion_rl.EmotionAgent`. ``predict`` acts through the same
:class:`~emotion_rl.EmotionPolicy` as collection and evaluation (the agent's ``make_policy``: the checkpoint's own
planner, greedy choice and context window), so a greedy episode played with ``predict`` is the episode ``validate``
plays from the same start. The model reads the previous step's reward (docs/algorithm.md, "Sequence layout"), which
SB3's ``predict`` has no argument for: here it is the keyword ``reward``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from tensordict import TensorDict

from emotion_rl.checkpoint import load_checkpoint
from emotion_rl.data.envs import NonFiniteError
from emotion_rl.env_record import EnvironmentRecord
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LoadAndPredict", "PredictState"]


class PredictState:
    """What :meth:`LoadAndPredict.predict` carries between calls: each env's real history (spec 3.1), kept by an
    :class:`~emotion_rl.EmotionPolicy` of its own. Opaque: pass back what ``predict`` returned; ``None`` starts over.
    ``predict`` updates it in place and returns it."""

    __slots__ = ("n_envs", "policy")

    def __init__(self, policy: EmotionPolicy, n_envs: int) -> None:
        self.policy = policy
        self.n_envs = n_envs

    def __repr__(self) -> str:
        lengths = self.policy.history_lengths
        return f"PredictState(n_envs={self.n_envs}, history_lengths={None if lengths is None else lengths.tolist()})"


class LoadAndPredict:
    """``load`` and ``predict`` for an agent with ``make_policy(greedy)`` and a ``model`` (``obs_dim``)."""

    env_record: EnvironmentRecord | None = None
    """The environment the loaded checkpoint was trained on (:meth:`load`); ``None`` for an agent built in code."""

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Self:
        """The agent of the checkpoint ``path``, on ``device``, in eval mode.

        Built from the checkpoint's own hyper-parameters (``load_from_checkpoint``): its planner and search
        settings, environment sizes and context window, whatever the current defaults are. The file is read with
        ``weights_only=True`` and refused, in one line, when it is missing, no checkpoint, damaged or holds objects
        that would run code (:func:`~emotion_rl.checkpoint.load_checkpoint`). :attr:`env_record` tells the
        environment it was trained on (:class:`~emotion_rl.env_record.EnvironmentRecord`).
        """
        checkpoint = load_checkpoint(path, map_location="cpu")
        agent = cls.load_from_checkpoint(path, map_location=device, weights_only=True)
        agent.env_record = EnvironmentRecord.of_checkpoint(checkpoint)
        return agent.to(device).eval()

    def predict(
        self,
        observation: np.ndarray | torch.Tensor,
        state: PredictState | None = None,
        episode_start: np.ndarray | bool | None = None,
        deterministic: bool = True,
        reward: np.ndarray | float | None = None,
    ) -> tuple[np.ndarray, PredictState]:
        """The action for ``observation``, and the state to pass to the next call (SB3's recurrent convention).

        Args:
            observation: ``[obs_dim]`` (one env) or ``[n_envs, obs_dim]``, numpy or torch, finite.
            state: ``None`` on the first call (every env starts an episode); then what the last call returned.
            episode_start: bool ``[n_envs]`` (or one bool): True where ``observation`` is the first of an episode,
                whose history then starts afresh (SB3's ``dones`` from the step that returned it; gymnasium's vector
                envs with ``autoreset_mode=SAME_STEP``). ``None``: no env starts (every env, when ``state`` is None).
            deterministic: True: the greedy evaluation policy (argmax emotion of the search, argmax action), as
                ``validate`` plays. False: acting as training does, at the end of its temperature schedule: the
                emotion drawn from the search's policy target at ``temperature_end`` (or the Gumbel root's choice,
                with its Gumbel noise), the action drawn from that emotion's action head; drawn from torch's
                global generator (``torch.manual_seed``).
            reward: ``[n_envs]`` (or one number): the reward of the step that returned ``observation``, which the
                model reads with it (it completes the previous entry of the history, decision 13). Needed for every
                env that continues an episode; ignored where an episode starts.

        Returns:
            ``(action, state)``: ``action`` an int64 array ``[n_envs]``, or 0-d for one unbatched observation
            (gymnasium's ``env.step`` takes it); ``state`` the updated :class:`PredictState`.

        Raises ``ValueError`` (one line) for an observation of the wrong size or a missing reward, and
        :class:`~emotion_rl.data.envs.NonFiniteError` for a NaN or infinite observation or reward.
        """
        obs, single = _observations(observation, int(self.model.obs_dim))
        n_envs = obs.shape[0]
        starts = _episode_starts(state, episode_start, n_envs)
        _refuse_non_finite("observation", obs, torch.ones(n_envs, dtype=torch.bool))
        rewards = _rewards(reward, starts)
        if state is None or state.n_envs != n_envs:
            state = PredictState(self._predict_policy(), n_envs)
        state.policy.greedy = bool(deterministic)
        step = TensorDict(
            observation=obs,
            is_init=starts.unsqueeze(-1),
            prev_reward=rewards.float().unsqueeze(-1),
            batch_size=[n_envs],
        )
        action = state.policy(step).get("action").reshape(n_envs).cpu().numpy().astype(np.int64)
        return (action.squeeze(0) if single else action), state

    def _predict_policy(self) -> EmotionPolicy:
        """A policy of its own for a new :class:`PredictState`; when it samples, at the end of the temperature
        schedule."""
        policy = self.make_policy(greedy=False)  # the training policy (its temperature schedule); greedy per call
        schedule = policy.temperature_schedule
        if isinstance(schedule, TemperatureSchedule):
            policy.frames.fill_(schedule.decay_frames)
        return policy


def _observations(observation: np.ndarray | torch.Tensor, obs_dim: int) -> tuple[torch.Tensor, bool]:
    """``(obs, single)``: ``observation`` as a float tensor ``[n_envs, obs_dim]``, and whether it was one unbatched
    ``[obs_dim]``; ``ValueError`` naming the sizes this model reads for another shape."""
    obs = torch.as_tensor(np.asarray(observation) if not isinstance(observation, torch.Tensor) else observation)
    single = obs.ndim == 1
    obs = obs.unsqueeze(0) if single else obs
    if obs.ndim != 2 or obs.shape[-1] != obs_dim:
        raise ValueError(
            f"EmotionAgent.predict: observation has shape {tuple(np.shape(observation))}; this model reads "
            f"observations of size {obs_dim}: pass [{obs_dim}] for one env or [n_envs, {obs_dim}]"
        )
    return (obs.float() if not obs.is_floating_point() else obs), single


def _episode_starts(state: PredictState | None, episode_start: object, n_envs: int) -> torch.Tensor:
    """Bool ``[n_envs]``: where an episode starts (every env without a ``state``, none without ``episode_start``);
    ``ValueError`` when ``state`` holds another number of envs and not every env starts."""
    if state is None:
        starts = torch.ones(n_envs, dtype=torch.bool)
    elif episode_start is None:
        starts = torch.zeros(n_envs, dtype=torch.bool)
    else:
        starts = _per_env("episode_start", episode_start, n_envs, bool)
    if state is not None and state.n_envs != n_envs and not bool(starts.all()):
        raise ValueError(
            f"EmotionAgent.predict: the state holds {state.n_envs} envs' histories, the observation {n_envs}; "
            "pass state=None (or episode_start True for every env) to start new episodes"
        )
    return starts


def _rewards(reward: object, starts: torch.Tensor) -> torch.Tensor:
    """The previous step's reward per env ``[n_envs]`` (decision 13), 0 where an episode ``starts``; ``ValueError``
    when it is missing for an env that continues, :class:`NonFiniteError` when such an env's is not finite."""
    n_envs = starts.shape[0]
    if reward is None:
        if not bool(starts.all()):
            raise ValueError(
                "EmotionAgent.predict: the model reads the reward of the previous step with each observation; "
                "pass reward=<what env.step returned with this observation> (ignored where an episode starts)"
            )
        return torch.zeros(n_envs)
    rewards = _per_env("reward", reward, n_envs, np.float64)
    _refuse_non_finite("reward", rewards.unsqueeze(-1), ~starts)
    return torch.where(starts, torch.zeros_like(rewards), rewards)


def _per_env(name: str, value: object, n_envs: int, dtype: type) -> torch.Tensor:
    """``value`` (one value, or one per env) as a tensor ``[n_envs]``; ``ValueError`` for another count."""
    array = np.asarray(value, dtype=dtype).reshape(-1)
    if array.size not in (1, n_envs):
        raise ValueError(f"EmotionAgent.predict: {name} has {array.size} values for {n_envs} envs; give one per env")
    return torch.as_tensor(array).expand(n_envs).clone()


def _refuse_non_finite(name: str, values: torch.Tensor, checked: torch.Tensor) -> None:
    """:class:`NonFiniteError` naming the first env whose ``values`` row (``checked`` rows only) is not finite."""
    bad = checked & ~torch.isfinite(values).all(-1)
    if bool(bad.any()):
        env = int(bad.nonzero()[0, 0])
        raise NonFiniteError(
            f"EmotionAgent.predict: the {name} of env {env} is not finite ({values[env].tolist()}); the model cannot "
            "read NaN or infinite values: fix the environment, or replace such values before predict"
        )
