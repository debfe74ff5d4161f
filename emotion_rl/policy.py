"""Acting (spec 1.6, 3.1, 5): the collector-facing policy (the temperature and the emotion draw: ``temperature.py``).

The policy keeps each environment's *real* history (:class:`~emotion_rl.history.History`; spec 3.1) and hands a
copy to the planner at every step; nothing imagined comes back into it (spec 1.6, decision 6). At step ``t`` the
last entry is ``s_t`` with ``a_t = e_t = NONE`` and ``r_t = 0``; ``a_t, e_t`` are written once chosen, ``r_t``
when the next call brings it as ``prev_reward``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.data import Binary, Categorical, MultiCategorical, MultiOneHot, OneHot
from torchrl.envs.utils import ExplorationType, exploration_type

from emotion_rl.decision import GREEDY_DECISIONS, decide_by_action, root_q
from emotion_rl.history import NONE, History
from emotion_rl.mcts.root_gap import ROOT_GAP_KEYS, root_q_gaps
from emotion_rl.model import evaluating, parameter_device_dtype
from emotion_rl.temperature import TemperatureSchedule, draw_device, select_emotion

__all__ = ["EmotionPolicy", "TemperatureSchedule", "select_emotion"]


GREEDY_EXPLORATION = (ExplorationType.DETERMINISTIC, ExplorationType.MODE, ExplorationType.MEAN)
"""TorchRL exploration types under which the policy acts greedily (argmax emotion and action, no root noise)."""


class EmotionPolicy(TensorDictModuleBase):
    """Collector-facing policy: per-env real history -> planner -> emotion -> action (spec 5, steps 1-3 and 6).

    Args:
        model: the :class:`~emotion_rl.model.EmotionModel` (anything with a ``context_window`` attribute, unless
            ``context_window`` is given, that the planner knows how to call).
        planner: ``search(model, history, generator=None, explore=False) -> TensorDict[*B]`` with at least
            ``policy_target`` [*B, E] (what the emotion is drawn from and what phase 4 learns; written out under
            the same key), ``visit_counts`` [*B, E], ``prior`` [*B, E] (the policy head's
            probabilities at the root, before any root noise) and ``action_logits`` [*B, E, A]; when it also
            returns ``selected_emotion`` [*B] (the Gumbel root), that is the emotion acted on. ``explore`` is
            ``not greedy``: root noise only while acting for training.
        temperature: a constant float (>= 0) or a :class:`TemperatureSchedule` driven by :attr:`frames`.
        greedy: temperature 0 and argmax action (evaluation). Also in effect, whatever this flag says, inside
            TorchRL's ``set_exploration_type(ExplorationType.DETERMINISTIC)`` (or ``MODE``, ``MEAN``).
        action_spec: the env's action spec (settable later as ``policy.action_spec``): ``OneHot`` gives one-hot
            actions, any other spec categorical actions in its dtype, ``None`` categorical long actions. Never
            stored as ``spec`` (a collector reads that as the policy's output spec).
        context_window: ``K``, the most recent real steps the planner sees (default ``model.context_window``); an
            episode that outgrows it slides: the oldest step is dropped (decision 15).
        generator: ``torch.Generator`` for the emotion and action draws and the search's (default: global RNG).
        greedy_decision: how a greedy call turns the search into an action (:mod:`emotion_rl.decision`):
            ``"emotion"`` (spec 5 step 3: the chosen emotion's argmax action; what agents act by) or ``"action"``
            (the action whose emotions' mean completed root ``Q`` is highest: the measurements' per-action reading,
            decision 26). Exploring calls are unchanged.

    In keys: ``observation``, ``is_init`` (``InitTracker``), ``prev_reward``
    (:class:`~emotion_rl.data.envs.PreviousReward`).
    Out keys: ``action``, ``emotion`` (long [*B]), ``policy_target`` (float [*B, E]), ``visit_counts``,
    ``prior`` (float [*B, E]; the self-play stream compares it with the visits, see
    :class:`~emotion_rl.data.selfplay.CollectionStats`), ``action_changed`` (bool [*B]): the greedy action of the
    emotion acted on, ``argmax_a action_logits[emotion, a]``, differs from the greedy action of the prior's argmax
    emotion, ``argmax_a action_logits[argmax_e prior[e], a]`` (both at the root, ties to the lowest index). It says
    whether choosing the emotion (search and temperature draw) changed what the agent would do, whatever action
    was then drawn; :class:`~emotion_rl.data.selfplay.CollectionStats` averages it into ``search/action_changed``.
    ``predicted_observation`` (float [*B, obs]): the next state the planner imagined for the emotion acted on, its
    root ``dynamics[emotion]`` (NaN when the planner returns no ``dynamics``); the data side measures the model's
    surprise with it (``EpisodeAssembler``'s novelty). ``root_q_gap``, ``root_action_gap`` (float [*B]): the
    margin of the search's decision at the root, :func:`~emotion_rl.mcts.root_gap.root_q_gaps` of its tree (NaN
    when the planner returns no ``tree``); the learner's diagnostics compare them with the value error.
    ``root_selected`` (bool [*B]): the emotion acted on is the root rule's own choice (no temperature draw chose
    it); the self-play stream logs its share as ``search/root_selected`` and leaves ``train/temperature`` out when
    no draw acted.
    Input batch ``[]`` or ``[n_envs]``. Histories are plain attributes (not in checkpoints), allocated on first use
    on the model's device and dtype; outputs go back to the observation's device. The buffer ``frames`` counts the
    env steps acted on (it drives the temperature schedule and is checkpointed with its owner).
    """

    in_keys = ["observation", "is_init", "prev_reward"]
    out_keys = [
        "action",
        "emotion",
        "policy_target",
        "visit_counts",
        "prior",
        "action_changed",
        "predicted_observation",
        *ROOT_GAP_KEYS,
        "root_selected",
    ]

    def __init__(
        self,
        model: nn.Module,
        planner,
        temperature: float | TemperatureSchedule | None = None,
        greedy: bool = False,
        action_spec=None,
        context_window: int | None = None,
        generator: torch.Generator | None = None,
        greedy_decision: str = "emotion",
    ) -> None:
        super().__init__()
        if greedy_decision not in GREEDY_DECISIONS:
            raise ValueError(
                f"EmotionPolicy: greedy_decision={greedy_decision!r} is not supported; choose one of "
                f"{list(GREEDY_DECISIONS)}"
            )
        self.greedy_decision = greedy_decision
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
        if context_window is None:
            context_window = getattr(model, "context_window", None)
        if context_window is None or int(context_window) < 1:
            raise ValueError(
                "EmotionPolicy: context_window must be a positive integer (pass it, or give the model a "
                f"context_window attribute); got {context_window!r}"
            )
        self.context_window = int(context_window)
        self.generator = generator
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
    def acting_greedily(self) -> bool:
        """True when the next call acts greedily: ``greedy``, or TorchRL's exploration type asks for it."""
        return self.greedy or exploration_type() in GREEDY_EXPLORATION

    @property
    def temperature(self) -> float:
        """The temperature the next emotion draw uses (0 when greedy)."""
        if self.acting_greedily:
            return 0.0
        if isinstance(self.temperature_schedule, TemperatureSchedule):
            return self.temperature_schedule(int(self.frames))
        return self.temperature_schedule

    # ------------------------------------------------------------------ history bookkeeping
    def reset_histories(self) -> None:
        """Forget every env's history; the next call allocates fresh ones (all envs must then be at is_init)."""
        self._history: History | None = None  # [n_envs, context_window]
        self._length: torch.Tensor | None = None  # [n_envs] valid entries

    @property
    def history_lengths(self) -> torch.Tensor | None:
        """Per-env number of real entries in the current histories ([n_envs] long), None before the first call."""
        return None if self._length is None else self._length.clone()

    def histories(self) -> History:
        """A copy of the current real histories as the planner sees them: ``[n_envs, longest]`` with ``mask``."""
        if self._length is None:
            raise RuntimeError("EmotionPolicy.histories(): no history yet (the policy has not been called)")
        max_len = max(int(self._length.max()), 1)
        history = self._history[:, :max_len].clone()
        history.mask = torch.arange(max_len, device=self._length.device) < self._length.unsqueeze(-1)
        return history

    def set_histories(self, history: History) -> None:
        """Continue the episodes of ``history`` ``[n_envs, T]`` (``T <= context_window``, ``mask`` a valid prefix of
        at least one entry, as :meth:`histories` returns it): the next call must bring each one's next state with
        ``is_init`` False. Why: a what-if rollout (a copy of an env, another action at its last step) continues a
        real episode with its own real history, without touching the policy that played it. The histories are copied
        to the model's device and dtype."""
        n_envs, length = history.batch_size
        if length > self.context_window:
            raise ValueError(
                f"EmotionPolicy.set_histories: {length} steps exceed the context window of {self.context_window}"
            )
        lengths = history.lengths()
        if bool((lengths < 1).any()):
            raise ValueError("EmotionPolicy.set_histories: every history needs at least one step (its current state)")
        device, dtype = parameter_device_dtype(self.model, history.observation)
        full = History.empty(n_envs, self.context_window, history.observation.shape[2:], dtype, device)
        for name in ("observation", "action", "emotion", "reward"):
            field = getattr(full, name)
            field[:, :length] = getattr(history, name).to(device, field.dtype)
        self._history, self._length = full, lengths.to(device)

    def _append_observation(self, obs: torch.Tensor, is_init: torch.Tensor, prev_reward: torch.Tensor) -> None:
        """Start new histories where is_init, record r_{t-1} elsewhere, append s_t with a/e = NONE and r = 0;
        a full history first drops its oldest step."""
        n_envs = obs.shape[0]
        history = self._history
        if history is None or history.batch_size[0] != n_envs or history.observation.shape[2:] != obs.shape[1:]:
            if history is not None and not bool(is_init.all()):
                raise RuntimeError(
                    f"EmotionPolicy: the input batch changed from {history.batch_size[0]} to {n_envs} envs (or the "
                    "observation shape changed) in the middle of episodes; call reset_histories() or reset the envs"
                )
            history = self._history = History.empty(n_envs, self.context_window, obs.shape[1:], obs.dtype, obs.device)
            self._length = torch.zeros((n_envs,), dtype=torch.long, device=obs.device)
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
            history.reward[rows[continuing], last[continuing]] = prev_reward[continuing].to(history.reward.dtype)
        full = self._length >= self.context_window
        if bool(full.any()):  # slide: drop each full row's oldest step
            for field in (history.observation, history.action, history.emotion, history.reward):
                field[full, :-1] = field[full, 1:].clone()
            self._length[full] -= 1
        position = self._length
        history.observation[rows, position] = obs.to(history.observation.dtype)
        history.action[rows, position] = NONE
        history.emotion[rows, position] = NONE
        history.reward[rows, position] = 0.0
        self._length += 1

    # ------------------------------------------------------------------ acting
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """One step for every env of the batch: record the observation, search, choose the emotion and the action,
        write the out keys (class docstring) into ``tensordict``."""
        if tensordict.batch_dims > 1:
            raise ValueError(
                f"EmotionPolicy expects a batch of [] or [n_envs], got batch_size {tuple(tensordict.batch_size)}"
            )
        unbatched = tensordict.batch_dims == 0
        td = tensordict.unsqueeze(0) if unbatched else tensordict
        obs, is_init, prev_reward = self._read_inputs(td)
        self._append_observation(obs, is_init, prev_reward)
        greedy = self.acting_greedily
        with evaluating(self.model):
            result = self.planner.search(self.model, self.histories(), generator=self.generator, explore=not greedy)

        action_logits = result.get("action_logits")
        greedy_actions = action_logits.float().argmax(-1)  # [n_envs, E]: each emotion's argmax action (root)
        emotion, root_selected = self._choose_emotion(result, greedy_actions, greedy, obs.device)
        rows = torch.arange(obs.shape[0], device=obs.device)
        logits = action_logits[rows, emotion].float()
        action = self._choose_action(logits, greedy, obs.device)
        position = self._length - 1
        self._history.action[rows, position] = action
        self._history.emotion[rows, position] = emotion
        self.frames += obs.shape[0]

        prior = result.get("prior").float()
        prior_emotion = prior.argmax(-1)  # ties to the lowest index, as the greedy emotion choice
        if "dynamics" in result.keys():
            predicted = result.get("dynamics")[rows, emotion].to(obs.dtype)
        else:
            predicted = torch.full_like(obs, float("nan"))
        out = {
            "action": self._encode_action(action, logits.shape[-1]),
            "emotion": emotion,
            "policy_target": result.get("policy_target").float(),  # the search's target (stored for phase 4)
            "visit_counts": result.get("visit_counts"),
            "prior": prior,
            "action_changed": greedy_actions[rows, emotion] != greedy_actions[rows, prior_emotion],
            "predicted_observation": predicted,
            **dict(zip(ROOT_GAP_KEYS, self._root_gaps(result, greedy_actions), strict=True)),
            "root_selected": root_selected,
        }
        out_device = td.get("observation").device
        for key, value in out.items():
            value = value.to(out_device)
            tensordict.set(key, value[0] if unbatched else value)
        return tensordict

    def _read_inputs(self, td: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``observation`` ``[n_envs, obs]`` (on the model's device and dtype), ``is_init`` and ``prev_reward``
        ``[n_envs]`` of a ``[n_envs]`` batch, each checked with the fix in its message."""
        n_envs = td.batch_size[0]
        if "prev_reward" not in td.keys():
            raise KeyError(
                "EmotionPolicy needs 'prev_reward' (the reward of the previous step) in its input: add "
                "emotion_rl.data.envs.PreviousReward() to the env's transforms (make_env does)"
            )
        if "is_init" not in td.keys():
            raise KeyError("EmotionPolicy needs 'is_init' in its input: add torchrl's InitTracker() to the env")
        device, dtype = parameter_device_dtype(self.model, td.get("observation"))
        obs = td.get("observation").to(device, dtype)
        if obs.ndim != 2:
            raise ValueError(f"EmotionPolicy expects observations of shape [n_envs, obs_dim], got {tuple(obs.shape)}")
        is_init = td.get("is_init").to(device).reshape(n_envs).bool()
        return obs, is_init, td.get("prev_reward").to(device).reshape(n_envs)

    def _choose_emotion(
        self, result: TensorDictBase, greedy_actions: torch.Tensor, greedy: bool, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The emotion acted through ``[n_envs]`` and whether it is the root rule's own choice: the root rule's
        (decision 25) or a draw from the policy target with the temperature (spec 3.4); when greedy under
        ``greedy_decision="action"``, moved to an emotion of the best pooled action (decision 26)."""
        n_envs = greedy_actions.shape[0]
        root_selects = "selected_emotion" in result.keys()
        if root_selects:  # the search chose (Gumbel root): no temperature draw (decision 25)
            emotion = result.get("selected_emotion").to(device)
        else:
            emotion = select_emotion(result.get("policy_target"), self.temperature, generator=self.generator)
            emotion = emotion.to(device)
        root_selected = torch.full((n_envs,), root_selects, dtype=torch.bool, device=device)
        if greedy and self.greedy_decision == "action":
            q = root_q(result)
            n_actions = result.get("action_logits").shape[-1]
            decided, _ = decide_by_action(q, greedy_actions, emotion, n_actions)
            root_selected &= decided == emotion
            emotion = decided
        return emotion, root_selected

    def _choose_action(self, logits: torch.Tensor, greedy: bool, device: torch.device) -> torch.Tensor:
        """The action ``[n_envs]`` from the chosen emotion's action logits ``[n_envs, A]``: the argmax when greedy,
        else a draw from their softmax (spec 5 step 3)."""
        if greedy:
            return logits.argmax(-1)
        probs = logits.softmax(-1).to(draw_device(self.generator, logits))
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).to(device)

    def _root_gaps(self, result: TensorDictBase, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`~emotion_rl.mcts.root_gap.root_q_gaps` of the search's ``completed_q`` with each emotion's greedy
        action at the root ``actions`` [n_envs, E]; NaN for a planner that returns no ``completed_q``."""
        if "completed_q" not in result.keys():
            nan = torch.full(actions.shape[:1], float("nan"), device=actions.device)
            return nan, nan.clone()
        gap, action_gap = root_q_gaps(result.get("completed_q").to(actions.device), actions)
        return gap.float(), action_gap.float()

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
            f"greedy={self.greedy}, temperature={temperature!r}, context_window={self.context_window}, "
            f"one_hot_actions={self.one_hot_actions}, greedy_decision={self.greedy_decision!r}"
        )
