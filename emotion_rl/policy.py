"""Acting: emotion selection with a temperature (spec 3.4) and the collector-facing policy (spec 1.6, 3.1, 5).

The policy keeps, for every environment of a batched env, the *real* sequence of that env's current episode
(spec 3.1: only actual experience) and asks the planner for a visit distribution over emotions at each step
(spec 1.3). Imagined states produced by the search never touch these tensors (spec 1.6): the planner receives a
copy of the history and only its outputs (visit counts, root action logits) come back.

History layout (README "Python API", SPEC_NOTES "Sequence layout"): entry i holds ``(s_i, a_i, e_i, r_i)``,
where ``r_i`` is the reward returned by the step that took ``a_i``. At step t the last entry is ``s_t`` with
``a_t = e_t = -1`` ("none") and ``r_t = 0``; a_t and e_t are written once the policy has chosen them, r_t when the
next call brings it in as ``prev_reward`` (see :class:`emotion_rl.data.PreviousReward`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.data import Binary, Categorical, MultiCategorical, MultiOneHot, OneHot

__all__ = ["EmotionPolicy", "TemperatureSchedule", "select_emotion"]


class TemperatureSchedule:
    """Linear temperature schedule for emotion sampling (spec 3.4).

    High temperature early (exploration), low temperature late (exploitation): the temperature goes linearly
    from ``start`` to ``end`` over the first ``decay_frames`` environment steps, then stays at ``end``.
    The spec's example values are the defaults (1.0 early, 0.1 late). ``decay_frames=0`` means "``end`` from the
    first step on"; ``start == end`` gives a constant temperature. A temperature of 0 means argmax.
    """

    def __init__(self, start: float = 1.0, end: float = 0.1, decay_frames: int = 20_000) -> None:
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TemperatureSchedule: {name} must be a finite number >= 0, got {value!r}")
        if isinstance(decay_frames, bool) or not isinstance(decay_frames, int) or decay_frames < 0:
            raise ValueError(f"TemperatureSchedule: decay_frames must be an integer >= 0, got {decay_frames!r}")
        self.start = float(start)
        self.end = float(end)
        self.decay_frames = int(decay_frames)

    def __call__(self, frames: int | torch.Tensor) -> float:
        """The temperature after ``frames`` environment steps."""
        frames = int(frames)
        if self.decay_frames == 0 or frames >= self.decay_frames:
            return self.end
        fraction = max(frames, 0) / self.decay_frames
        return self.start + (self.end - self.start) * fraction

    def __repr__(self) -> str:
        return f"TemperatureSchedule(start={self.start}, end={self.end}, decay_frames={self.decay_frames})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TemperatureSchedule):
            return NotImplemented
        return (self.start, self.end, self.decay_frames) == (other.start, other.end, other.decay_frames)


def select_emotion(
    visit_distribution: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one emotion per row of ``visit_distribution`` [*B, E] (spec 3.4); returns long [*B].

    ``temperature == 0``: argmax, ties to the lowest emotion index. Otherwise the spec's
    ``probs = dist ** (1 / T); probs /= probs.sum()`` followed by a draw from ``probs``. It is computed in log
    space, ``softmax((log dist - log max dist) / T)``, which is the same distribution without overflow for tiny T
    (the largest entries get logit 0, the others tend to -inf, so ``T -> 0`` approaches a uniform draw among the
    tied maxima). Emotions with zero visits get probability exactly zero at every temperature. Rows need not be
    normalised (raw visit counts give the same result).
    """
    if isinstance(temperature, torch.Tensor):
        temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"select_emotion: temperature must be a finite number >= 0, got {temperature!r}")
    if visit_distribution.ndim < 1 or visit_distribution.shape[-1] == 0:
        raise ValueError(
            "select_emotion: visit_distribution must have shape [*B, E] with E >= 1, "
            f"got {tuple(visit_distribution.shape)}"
        )
    dist = visit_distribution.detach().to(torch.float64)
    batch_shape = dist.shape[:-1]
    flat = dist.reshape(-1, dist.shape[-1])
    if flat.numel() and (not torch.isfinite(flat).all() or (flat < 0).any() or (flat.sum(-1) <= 0).any()):
        raise ValueError(
            "select_emotion: every row of visit_distribution must be finite, non-negative and have a positive sum"
        )
    if temperature == 0:
        # torch.argmax returns the first maximal index: ties go to the lowest emotion index.
        return flat.argmax(-1).reshape(batch_shape)
    log_dist = flat.log()  # log 0 = -inf: zero-visit emotions keep probability 0
    logits = (log_dist - log_dist.max(-1, keepdim=True).values) / temperature
    probs = logits.softmax(-1)
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return choice.reshape(batch_shape)


class EmotionPolicy(TensorDictModuleBase):
    """Collector-facing policy: per-env real history -> planner -> emotion -> action (spec 5, steps 1-3 and 6).

    Args:
        model: the :class:`~emotion_rl.model.EmotionModel` (anything with a ``context_length`` attribute, unless
            ``context_length`` is given, that the planner knows how to call).
        planner: object with ``search(model, history) -> TensorDict[*B]`` carrying at least
            ``visit_distribution`` [*B, E], ``visit_counts`` [*B, E] and ``action_logits`` [*B, E, A].
        temperature: a constant float (>= 0) or a :class:`TemperatureSchedule` driven by :attr:`frames`.
        greedy: temperature 0 and argmax action (evaluation).
        action_spec: the env's action spec (``env.action_spec``; also settable later as ``policy.action_spec``). A
            ``OneHot`` spec makes the policy write one-hot actions, any other spec categorical actions in its dtype,
            and ``None`` categorical long actions, which only suits envs built with categorical action encoding
            (torchrl's GymEnv default for ``Discrete`` is one-hot). Never stored as ``spec`` (a collector reads a
            policy's ``spec`` attribute as its output spec).
        context_length: the longest real history the policy keeps; defaults to ``model.context_length - 1`` (the
            planner appends one imagined state to the history, spec 1.5, and the model's context must hold both).
        generator: optional ``torch.Generator`` for the emotion and action draws (default: the global RNG).
        history_window: what happens when an episode outgrows ``context_length``. ``False`` (default): refused,
            naming both lengths (the spec's history is the whole episode, spec 1.3; ``EmotionAgent`` sizes the
            context from the env's time limit, so its episodes never outgrow it). ``True``: the history becomes a
            window of the most recent ``context_length`` steps (the oldest step is dropped), so an episode of any
            length plays on with a model of a fixed context.

    In keys: ``observation``, ``is_init`` (from ``InitTracker``) and ``prev_reward`` (from
    :class:`emotion_rl.data.PreviousReward`). Out keys: ``action``, ``emotion`` (long [*B]),
    ``visit_distribution`` (float [*B, E]), ``visit_counts`` (long [*B, E]).

    The input batch is ``[]`` (one env) or ``[n_envs]``. History tensors are plain attributes (not buffers, so
    they stay out of checkpoints), allocated on first use with the input's batch size, on the model's device and in
    its floating dtype (the observation's when the model has no parameters); outputs go back to the observation's
    device. The model is put in eval mode for the search and restored afterwards.

    The registered buffer ``frames`` counts the env steps this policy has acted on (one per env per call) and
    drives the temperature schedule; it is saved with the module that owns the policy. (A collector calls its
    policy once at construction to discover its outputs; :class:`~emotion_rl.data.EmotionDataModule` resets
    ``frames`` afterwards to the env steps it has collected, a counter it checkpoints.)
    """

    in_keys = ["observation", "is_init", "prev_reward"]
    out_keys = ["action", "emotion", "visit_distribution", "visit_counts"]

    def __init__(
        self,
        model: nn.Module,
        planner,
        temperature: float | TemperatureSchedule | None = None,
        greedy: bool = False,
        action_spec=None,
        context_length: int | None = None,
        generator: torch.Generator | None = None,
        history_window: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.planner = planner
        if temperature is None:
            temperature = TemperatureSchedule()
        if not isinstance(temperature, TemperatureSchedule):
            temperature = float(temperature)
            if not math.isfinite(temperature) or temperature < 0:
                raise ValueError(f"EmotionPolicy: temperature must be a finite number >= 0, got {temperature!r}")
        self.temperature_schedule = temperature
        self.greedy = bool(greedy)
        self.action_spec = action_spec
        if context_length is None:
            model_context = getattr(model, "context_length", None)
            context_length = None if model_context is None else int(model_context) - 1
        if context_length is None or int(context_length) < 1:
            raise ValueError(
                "EmotionPolicy: context_length must be a positive integer (pass it, or give the model a "
                f"context_length attribute); got {context_length!r}"
            )
        self.context_length = int(context_length)
        self.generator = generator
        self.history_window = bool(history_window)
        self.register_buffer("frames", torch.zeros((), dtype=torch.long))
        self.reset_histories()

    # ------------------------------------------------------------------ action encoding
    @property
    def action_spec(self):
        """The env's action spec; settable after construction (the datamodule sets it from the env it builds)."""
        return self._action_spec

    @action_spec.setter
    def action_spec(self, value) -> None:
        multi = (MultiOneHot, MultiCategorical, Binary)
        if value is not None and (not isinstance(value, (OneHot, Categorical)) or isinstance(value, multi)):
            raise ValueError(
                f"EmotionPolicy acts in discrete action spaces only: the action spec is {type(value).__name__} "
                f"(shape {tuple(value.shape)}, dtype {value.dtype}); supported: a Discrete action space, i.e. a "
                "torchrl OneHot or Categorical action spec, with 1-D Box observations"
            )
        self._action_spec = value

    @property
    def one_hot_actions(self) -> bool:
        """True when actions are written one-hot (the action spec is a ``OneHot``), else categorical long."""
        return isinstance(self._action_spec, OneHot)

    # ------------------------------------------------------------------ temperature
    @property
    def temperature(self) -> float:
        """The temperature the next emotion draw uses (0 when greedy)."""
        if self.greedy:
            return 0.0
        if isinstance(self.temperature_schedule, TemperatureSchedule):
            return self.temperature_schedule(int(self.frames))
        return self.temperature_schedule

    # ------------------------------------------------------------------ history bookkeeping
    def reset_histories(self) -> None:
        """Forget every env's history; the next call allocates fresh ones (all envs must then be at is_init)."""
        self._obs: torch.Tensor | None = None
        self._action: torch.Tensor | None = None
        self._emotion: torch.Tensor | None = None
        self._reward: torch.Tensor | None = None
        self._length: torch.Tensor | None = None

    @property
    def history_lengths(self) -> torch.Tensor | None:
        """Per-env number of real entries in the current histories ([n_envs] long), None before the first call."""
        return None if self._length is None else self._length.clone()

    def histories(self) -> TensorDict:
        """The current real histories as the planner sees them: TensorDict [n_envs, max length] with ``mask``."""
        if self._length is None:
            raise RuntimeError("EmotionPolicy.histories(): no history yet (the policy has not been called)")
        max_len = max(int(self._length.max()), 1)
        mask = torch.arange(max_len, device=self._length.device) < self._length.unsqueeze(-1)
        return TensorDict(
            {
                "observation": self._obs[:, :max_len].clone(),
                "action": self._action[:, :max_len].clone(),
                "emotion": self._emotion[:, :max_len].clone(),
                "reward": self._reward[:, :max_len].clone(),
                "mask": mask,
            },
            batch_size=[self._length.shape[0], max_len],
            device=self._length.device,
        )

    def _model_device_dtype(self, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        """Device and floating dtype of the model's parameters (the observation's when it has none)."""
        for tensor in self.model.parameters():
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
        return fallback.device, fallback.dtype if fallback.is_floating_point() else torch.get_default_dtype()

    def _allocate(self, n_envs: int, obs_shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
        length = self.context_length
        self._obs = torch.zeros((n_envs, length, *obs_shape), dtype=dtype, device=device)
        self._action = torch.full((n_envs, length), -1, dtype=torch.long, device=device)
        self._emotion = torch.full((n_envs, length), -1, dtype=torch.long, device=device)
        self._reward = torch.zeros((n_envs, length), dtype=dtype, device=device)
        self._length = torch.zeros((n_envs,), dtype=torch.long, device=device)

    def _append_observation(self, obs: torch.Tensor, is_init: torch.Tensor, prev_reward: torch.Tensor) -> None:
        """Start new histories where is_init, record r_{t-1} elsewhere, append s_t with a/e = -1 and r = 0."""
        n_envs = obs.shape[0]
        if self._length is None or self._length.shape[0] != n_envs or self._obs.shape[2:] != obs.shape[1:]:
            if self._length is not None and not bool(is_init.all()):
                raise RuntimeError(
                    f"EmotionPolicy: the input batch changed from {self._length.shape[0]} to {n_envs} envs (or the "
                    "observation shape changed) in the middle of episodes; call reset_histories() or reset the envs"
                )
            self._allocate(n_envs, obs.shape[1:], obs.dtype, obs.device)
        elif not bool(is_init.all()) and self._length[~is_init].eq(0).any():
            raise RuntimeError(
                "EmotionPolicy: an env without is_init has no history (its first step was never seen by this "
                "policy); reset the env or the collector"
            )
        rows = torch.arange(n_envs, device=obs.device)
        self._length[is_init] = 0
        continuing = ~is_init
        if continuing.any():
            last = (self._length - 1).clamp_min(0)
            self._reward[rows[continuing], last[continuing]] = prev_reward[continuing].to(self._reward.dtype)
        full = self._length >= self.context_length
        if bool(full.any()):
            if not self.history_window:
                raise RuntimeError(
                    f"EmotionPolicy: history length {int(self._length.max()) + 1} exceeds the policy's context length "
                    f"{self.context_length} (real steps; the model's context also holds the imagined state); give "
                    "the model a context of at least the env's max_episode_steps + 1, or pass history_window=True "
                    "to plan on the most recent steps only"
                )
            for history in (self._obs, self._action, self._emotion, self._reward):  # drop each full row's oldest
                history[full, :-1] = history[full, 1:].clone()
            self._length[full] -= 1
        position = self._length
        self._obs[rows, position] = obs.to(self._obs.dtype)
        self._action[rows, position] = -1
        self._emotion[rows, position] = -1
        self._reward[rows, position] = 0.0
        self._length += 1

    # ------------------------------------------------------------------ acting
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.batch_dims > 1:
            raise ValueError(
                f"EmotionPolicy expects a batch of [] or [n_envs], got batch_size {tuple(tensordict.batch_size)}"
            )
        unbatched = tensordict.batch_dims == 0
        td = tensordict.unsqueeze(0) if unbatched else tensordict
        n_envs = td.batch_size[0]
        if "prev_reward" not in td.keys():
            raise KeyError(
                "EmotionPolicy needs 'prev_reward' (the reward of the previous step) in its input: add "
                "emotion_rl.data.PreviousReward() to the env's transforms (make_env does)"
            )
        if "is_init" not in td.keys():
            raise KeyError("EmotionPolicy needs 'is_init' in its input: add torchrl's InitTracker() to the env")
        out_device = td.get("observation").device
        device, dtype = self._model_device_dtype(td.get("observation"))
        obs = td.get("observation").to(device, dtype)
        if obs.ndim != 2:
            raise ValueError(f"EmotionPolicy expects observations of shape [n_envs, obs_dim], got {tuple(obs.shape)}")
        is_init = td.get("is_init").to(device).reshape(n_envs).bool()
        prev_reward = td.get("prev_reward").to(device).reshape(n_envs)

        self._append_observation(obs, is_init, prev_reward)
        history = self.histories()

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                result = self.planner.search(self.model, history)
        finally:
            self.model.train(was_training)

        visit_distribution = result.get("visit_distribution").float()
        visit_counts = result.get("visit_counts")
        action_logits = result.get("action_logits")
        rows = torch.arange(n_envs, device=device)
        emotion = select_emotion(visit_distribution, self.temperature, generator=self.generator).to(device)
        logits = action_logits[rows, emotion].float()
        if self.greedy:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(logits.softmax(-1), 1, generator=self.generator).squeeze(-1)

        position = self._length - 1
        self._action[rows, position] = action
        self._emotion[rows, position] = emotion
        self.frames += n_envs

        action_out = self._encode_action(action, logits.shape[-1])
        out = {
            "action": action_out,
            "emotion": emotion,
            "visit_distribution": visit_distribution,
            "visit_counts": visit_counts,
        }
        for key, value in out.items():
            value = value.to(out_device)
            tensordict.set(key, value[0] if unbatched else value)
        return tensordict

    def _encode_action(self, action: torch.Tensor, n_actions: int) -> torch.Tensor:
        spec = self.action_spec
        if self.one_hot_actions:
            n = spec.shape[-1]
            if n != n_actions:
                raise ValueError(f"EmotionPolicy: the action spec has {n} actions, the model's logits {n_actions}")
            return F.one_hot(action, n).to(spec.dtype)
        if spec is not None and spec.dtype is not None:
            return action.to(spec.dtype)
        return action

    def extra_repr(self) -> str:
        temperature = self.temperature_schedule
        return (
            f"greedy={self.greedy}, temperature={temperature!r}, context_length={self.context_length}, "
            f"one_hot_actions={self.one_hot_actions}"
        )
