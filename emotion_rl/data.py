"""Environments, episode assembly, episode replay and the Lightning datamodule (spec 2.2.2, 3.3, 5).

Data flow: a :class:`torchrl.collectors.Collector` steps a batched env with the
:class:`~emotion_rl.policy.EmotionPolicy` (MCTS at every step, spec 5 steps 1-4); :class:`EpisodeAssembler` cuts the
collected ``[n_envs, steps]`` batches into whole episodes (observation, action, emotion, reward, MCTS visit
distribution: spec 3.3) and computes their discounted returns (spec 2.2.2); :class:`EpisodeReplay` keeps the most
recent whole episodes; the training stream samples ``[B, L]`` batches of them for the four-phase update (spec 2.3,
5 step 8).
"""

from __future__ import annotations

import atexit
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import gymnasium
import torch
from lightning import LightningDataModule
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector, MultiCollector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
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

from emotion_rl.checkpoint import CheckpointError, rng_state, set_rng_state

__all__ = [
    "EPISODE_KEYS",
    "EmotionDataModule",
    "EnvInfo",
    "EpisodeAssembler",
    "EpisodeReplay",
    "PreviousReward",
    "discounted_returns",
    "evaluate_policy",
    "make_env",
    "probe_env",
]

#: Keys of one stored episode (README, "Data flow"); all right-padded to a common length.
EPISODE_KEYS = (
    "observation",
    "next_observation",
    "action",
    "emotion",
    "reward",
    "done",
    "visit_distribution",
    "return",
    "mask",
)


# ---------------------------------------------------------------------------------------------------- environments
class PreviousReward(Transform):
    """Expose the previous step's reward as an observation, ``prev_reward`` (0 after a reset).

    TorchRL's root tensordict at step t carries ``s_t`` but not ``r_{t-1}`` (it lives under ``("next", "reward")``
    of step t-1 and ``step_mdp`` drops rewards). The policy needs it to complete history entry t-1
    (``(s_{t-1}, a_{t-1}, e_{t-1}, r_{t-1})``, SPEC_NOTES "Sequence layout"). This transform copies
    ``next["reward"]`` into ``next["prev_reward"]``, declared in the observation spec, so ``step_mdp`` moves it to
    the root of the following step; reset writes zeros (torchrl merges partial resets with the ``_reset`` mask, so
    envs that are not reset keep their value).
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

    def transform_observation_spec(self, observation_spec):
        observation_spec[self.out_keys[0]] = self.parent.full_reward_spec[self.in_keys[0]].clone()
        return observation_spec

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        raise NotImplementedError("PreviousReward only works inside an environment (TransformedEnv)")


@dataclass(frozen=True)
class EnvInfo:
    """What the model needs to know about an env (SPEC_NOTES 12: dimensions come from the env)."""

    env_id: str
    obs_dim: int
    n_actions: int
    max_episode_steps: int


def probe_env(env_id: str, max_episode_steps: int | None = None) -> EnvInfo:
    """Check that ``env_id`` is supported and read its dimensions and episode limit (cheap: one ``gymnasium.make``).

    Supported: a 1-D continuous ``Box`` observation and a ``Discrete`` action space (starting at 0). The episode
    limit is ``max_episode_steps`` when given, else the gymnasium registration's ``max_episode_steps``; an env
    without either is refused (histories must fit the model's context, so episodes must be bounded).
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
    """A batched (``[num_envs]``) torchrl env for ``env_id`` with the transforms the policy needs.

    ``SerialEnv(num_envs, GymEnv(env_id))``, not ``GymEnv(env_id, num_envs=...)``: the latter wraps a gymnasium
    ``AsyncVectorEnv``, whose default autoreset mode in gymnasium 1.x is NEXT_STEP. With torchrl 0.14.1 this produces
    wrong transitions (checked): the terminal ``next/observation`` is zero-filled and the first step of every later
    episode is a fake transition from the terminal state with reward 0. ``SerialEnv`` resets each env through
    torchrl's own partial-reset path, so every transition is real (``test_make_env_transitions_are_consistent``).
    Its cost (about 0.5 ms per env step on CPU) is small next to a search per step.

    Transforms: ``InitTracker`` (``is_init``: the policy starts a new history), :class:`PreviousReward`
    (``prev_reward``), ``StepCounter`` (``step_count``) and ``RewardSum`` (``episode_reward``). Raises
    ``ValueError`` for unsupported envs (see :func:`probe_env`, which also reports ``max_episode_steps``).
    Actions are one-hot (torchrl's default ``OneHot`` spec for gym ``Discrete``), or categorical long with
    ``categorical_action_encoding=True``; :class:`~emotion_rl.policy.EmotionPolicy` writes whichever the spec says.
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


# ---------------------------------------------------------------------------------------------------- episodes
def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_{t' >= t} gamma^(t' - t) r_t'`` over one whole episode (spec 2.2.2), float64 accumulation.

    Literal: the sum stops at the episode's last step, also when the episode was truncated (no bootstrap).
    """
    values = rewards.detach().to("cpu", torch.float64).tolist()
    out = [0.0] * len(values)
    running = 0.0
    for t in range(len(values) - 1, -1, -1):
        running = values[t] + gamma * running
        out[t] = running
    return torch.tensor(out, dtype=torch.float32, device=rewards.device)


class EpisodeAssembler:
    """Cut collector batches into whole episodes (spec 3.3: states, actions, emotions, rewards, MCTS distributions).

    ``ingest(batch)`` takes a collector batch ``[n_envs, steps]`` (or ``[steps]``) with ``observation``, ``action``
    (one-hot or categorical), ``emotion``, ``visit_distribution``, ``is_init`` and ``next/{observation, reward,
    done}``, and returns the episodes that ended in it as a TensorDict ``[K, max_len]`` with :data:`EPISODE_KEYS`
    (or ``None``). An episode starts at a step with ``is_init`` and ends at a step with ``next/done``; the
    unfinished tail of each env is kept and continued by the next batch. Steps whose episode start was not seen
    (or an episode cut by a reset without ``done``) are dropped and counted in ``dropped_steps``.

    Stored episode layout (right padding): ``observation``/``next_observation`` float [L, obs], ``action``,
    ``emotion`` long [L] (categorical, even when the env used one-hot actions), ``reward`` float [L], ``done`` bool
    [L] (True at the last step), ``visit_distribution`` float [L, E], ``return`` float [L] (:func:`discounted_returns`)
    and ``mask`` bool [L] (True on the valid prefix). Padded entries are zero (action 0, emotion 0, done False).
    """

    def __init__(self, max_len: int, gamma: float = 0.99) -> None:
        if int(max_len) < 1:
            raise ValueError(f"EpisodeAssembler: max_len must be >= 1, got {max_len}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"EpisodeAssembler: gamma must be in [0, 1], got {gamma}")
        self.max_len = int(max_len)
        self.gamma = float(gamma)
        self._open: dict[int, list[TensorDict] | None] = {}
        self.dropped_steps = 0
        self.finished_returns: list[float] = []  # undiscounted returns of episodes emitted since the last drain
        self.finished_lengths: list[int] = []

    def reset(self) -> None:
        """Forget unfinished episodes (e.g. when the env is rebuilt)."""
        self._open.clear()

    def drain_finished(self) -> tuple[list[float], list[int]]:
        """Undiscounted returns and lengths of the episodes emitted since the previous call."""
        returns, lengths = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return returns, lengths

    @staticmethod
    def _steps(batch: TensorDictBase) -> TensorDict:
        n_dims = batch.batch_dims
        action = batch.get("action")
        if action.ndim > n_dims:  # one-hot encoded
            action = action.argmax(-1)

        def flat(key):
            value = batch.get(key)
            return value.reshape(batch.batch_size) if value.ndim > n_dims else value

        return TensorDict(
            {
                "observation": batch.get("observation").float(),
                "next_observation": batch.get(("next", "observation")).float(),
                "action": action.long(),
                "emotion": batch.get("emotion").long(),
                "reward": flat(("next", "reward")).float(),
                "done": flat(("next", "done")).bool(),
                "visit_distribution": batch.get("visit_distribution").float(),
                "is_init": flat("is_init").bool(),
            },
            batch_size=batch.batch_size,
        ).clone()  # own memory: unfinished episodes outlive the collector's batch

    def ingest(self, batch: TensorDictBase) -> TensorDict | None:
        if batch.batch_dims == 1:
            batch = batch.unsqueeze(0)
        if batch.batch_dims != 2:
            raise ValueError(f"EpisodeAssembler.ingest expects [n_envs, steps] batches, got {tuple(batch.batch_size)}")
        steps = self._steps(batch).to("cpu")
        n_envs, n_steps = steps.batch_size
        episodes: list[TensorDict] = []
        starts = steps.get("is_init").tolist()
        ends = steps.get("done").tolist()
        for env in range(n_envs):
            chunks = self._open.get(env)
            begin = 0  # first step of the current piece in this batch
            for t in range(n_steps):
                if starts[env][t]:
                    if chunks is not None or t > begin:  # unfinished episode cut by a reset, or an unseen start
                        self.dropped_steps += sum(c.batch_size[0] for c in chunks or []) + (t - begin)
                    chunks, begin = [], t
                if ends[env][t]:
                    if chunks is None:  # its start was never seen
                        self.dropped_steps += t + 1 - begin
                    else:
                        chunks.append(steps[env, begin : t + 1])
                        episodes.append(self._finish(torch.cat(chunks, 0)))
                    chunks, begin = None, t + 1
            if chunks is not None:
                if n_steps > begin:
                    chunks.append(steps[env, begin:])
            elif n_steps > begin:
                self.dropped_steps += n_steps - begin
            self._open[env] = chunks
        if not episodes:
            return None
        return torch.stack(episodes, 0)

    def _finish(self, episode: TensorDict) -> TensorDict:
        length = episode.batch_size[0]
        if length > self.max_len:
            raise RuntimeError(
                f"EpisodeAssembler: an episode of {length} steps exceeds max_len {self.max_len} "
                "(max_episode_steps of the env); raise max_episode_steps or check the env's time limit"
            )
        reward = episode.get("reward")
        self.finished_returns.append(float(reward.double().sum()))
        self.finished_lengths.append(length)
        out = episode.exclude("is_init")
        out.set("return", discounted_returns(reward, self.gamma))
        out.set("mask", torch.ones(length, dtype=torch.bool))
        pad = self.max_len - length
        if pad:
            out = out.apply(lambda x: torch.cat([x, x.new_zeros((pad, *x.shape[1:]))], 0), batch_size=[self.max_len])
        return out


def window_index(end: torch.Tensor, window: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps of the windows that end at ``end`` ``[N]``: ``max(0, t - window + 1) .. t``, left-aligned. Returns
    ``index`` ``[N, window]`` (clamped to ``length - 1`` past the end, for gathering) and ``valid`` ``[N, window]``.
    The history a windowed policy plans on at step ``t`` (README, "Context window")."""
    index = (end - window + 1).clamp(min=0).unsqueeze(-1) + torch.arange(window, device=end.device)
    valid = index <= end.unsqueeze(-1)
    return index.clamp(max=length - 1), valid


class EpisodeReplay:
    """Replay of whole episodes: ``TensorDictReplayBuffer(LazyTensorStorage(capacity_episodes))``, FIFO.

    Whole episodes, not slices: the model is causal over the real sequence (spec 1.3: ``h_t`` encodes
    ``[s_0, a_0, e_0, r_0, ..., s_t]``), so a training target at step t needs the episode's prefix from step 0.
    A slice from the middle of an episode would change every ``h_t`` it contains. Sampling is uniform over stored
    episodes, with replacement. Each sampled batch is cut to the longest valid episode in it (``trim=True``) so the
    model does not run over padding only; the result is ``[B, L]`` with ``L <= max_len``. With a ``generator`` the
    sampling draws from it alone, and its state is part of :meth:`state_dict` (exact resume). With a context
    window (:meth:`sample_windows`) the model reads only the last ``window`` real steps, at acting time as in
    training, and a window is then the whole history of its last step.
    """

    def __init__(self, capacity_episodes: int, generator: torch.Generator | None = None) -> None:
        if int(capacity_episodes) < 1:
            raise ValueError(f"EpisodeReplay: capacity_episodes must be >= 1, got {capacity_episodes}")
        self.capacity = int(capacity_episodes)
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(self.capacity), generator=generator)
        self.window_rng = torch.Generator()  # end steps of sample_windows

    def __len__(self) -> int:
        return len(self.buffer)

    def seed(self, seed: int) -> None:
        """Sample from a fresh generator seeded with ``seed`` from now on."""
        self.buffer.set_rng(torch.Generator().manual_seed(int(seed)))
        self.window_rng.manual_seed(int(seed) + 1)

    def extend(self, episodes: TensorDictBase) -> None:
        """Add ``[K, max_len]`` episodes (the oldest are overwritten once the buffer is full)."""
        self.buffer.extend(episodes.select(*EPISODE_KEYS).clone())

    def sample(self, batch_size: int, trim: bool = True, with_index: bool = False) -> TensorDict:
        """``[B, L]`` episodes; ``with_index``: ``{"episodes", "index"}``, with storage slots for :meth:`refresh`."""
        if len(self) == 0:
            raise RuntimeError("EpisodeReplay.sample: the replay buffer is empty")
        sampled = self.buffer.sample(batch_size)
        batch = sampled.select(*EPISODE_KEYS)
        if trim:
            longest = max(int(batch.get("mask").sum(-1).max()), 1)
            batch = batch[:, :longest].clone()
        if with_index:
            index = sampled.get("index")  # repeated along each episode's steps: [B, max_len]
            return TensorDict({"episodes": batch, "index": index[:, 0]}, batch_size=[batch.shape[0]])
        return batch

    def sample_windows(self, batch_size: int, window: int) -> TensorDict:
        """``[B, window]`` windows of consecutive steps: ``B`` end steps ``t`` drawn uniformly among all stored
        steps (with replacement; so an episode is drawn in proportion to its length, as whole-episode batches weigh
        it), and for each the window that ends at ``t``: steps ``max(0, t - window + 1) .. t``, left-aligned,
        ``mask`` False after ``t``.

        The last step of a window always sees the same real history as the windowed policy that acted there (the
        last ``window`` steps, or the episode from step 0 when it is shorter): the context-window reading of spec
        1.3 (README, "Context window"). Earlier steps of a window see a shorter history than they did when acted on
        (as in Decision Transformer's training windows). Draws come from :attr:`window_rng`, saved in
        :meth:`state_dict`.
        """
        if len(self) == 0:
            raise RuntimeError("EpisodeReplay.sample_windows: the replay buffer is empty")
        stored = self.buffer[: len(self)]
        lengths = stored.get("mask").sum(-1)
        index = torch.multinomial(lengths.double(), batch_size, replacement=True, generator=self.window_rng)
        lengths = lengths[index]
        end = (torch.rand(batch_size, generator=self.window_rng) * lengths).long().clamp(max=lengths - 1)
        steps, valid = window_index(end, window, stored.shape[1])
        windows = stored.select(*EPISODE_KEYS)[index.unsqueeze(-1).expand_as(steps), steps]
        windows.set("mask", windows.get("mask") & valid)
        longest = max(int(windows.get("mask").sum(-1).max()), 1)
        return windows[:, :longest].clone()

    def refresh(self, index: torch.Tensor, key: str, values: torch.Tensor) -> None:
        """Overwrite ``key`` of the stored episodes at ``index`` on their first ``values.shape[1]`` steps."""
        stored = self.buffer[index]
        stored.get(key)[:, : values.shape[1]] = values.to(stored.get(key).dtype)
        self.buffer[index] = stored

    def state_dict(self) -> dict:
        return {**self.buffer.state_dict(), "window_rng": self.window_rng.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        window_rng = state_dict.pop("window_rng", None)
        if window_rng is not None:
            self.window_rng.set_state(window_rng)
        self.buffer.load_state_dict(state_dict)


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_policy(env: EnvBase, policy, max_steps: int) -> TensorDict:
    """Play the first episode of every env of ``env`` (batch ``[n]``) with ``policy``; TensorDict [] with
    ``episode_return`` float [n] (undiscounted) and ``episode_length`` long [n]. Stops after ``max_steps`` steps
    at the latest (an env's time limit normally ends its episode first). Sets ``policy.action_spec`` to the env's
    when the policy has one (so it writes actions in the env's encoding)."""
    if hasattr(policy, "action_spec"):
        policy.action_spec = env.action_spec
    td = env.reset()
    n_envs = td.batch_size.numel()
    finished = torch.zeros(n_envs, dtype=torch.bool)
    returns = torch.zeros(n_envs, dtype=torch.float64)
    lengths = torch.zeros(n_envs, dtype=torch.long)
    for _ in range(int(max_steps)):
        td = policy(td)
        td, next_td = env.step_and_maybe_reset(td)
        reward = td.get(("next", "reward")).reshape(n_envs).to("cpu", torch.float64)
        done = td.get(("next", "done")).reshape(n_envs).to("cpu")
        active = ~finished
        returns[active] += reward[active]
        lengths[active] += 1
        finished |= done
        if bool(finished.all()):
            break
        td = next_td
    return TensorDict({"episode_return": returns.float(), "episode_length": lengths}, batch_size=[])


# ---------------------------------------------------------------------------------------------------- datamodule
class _Stream(IterableDataset):
    """An IterableDataset whose iterator is produced by a callable (so it reads the datamodule's live state)."""

    def __init__(self, make_iterator) -> None:
        super().__init__()
        self._make_iterator = make_iterator

    def __iter__(self) -> Iterator[TensorDict]:
        return self._make_iterator()


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"EmotionDataModule: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class EmotionDataModule(LightningDataModule):
    """Self-play data for the emotion MCTS agent (spec 5): collection, episode replay, training batches, evaluation.

    Args:
        env_id: gymnasium env id (1-D Box observations, Discrete actions).
        num_envs: envs stepped together by the collector (one search per env per step, batched).
        frames_per_batch: env steps per collection, over all envs (rounded up to a multiple of ``num_envs``).
        batch_size: episodes (windows, with ``context_window``) per training batch.
        updates_per_collection: training batches yielded after each collection (once the warm-up is reached).
        replay_capacity: episodes kept in the replay (FIFO).
        warmup_episodes: finished episodes needed in the replay before the first training batch (at least 1).
        gamma: discount of the returns (spec 2.2.2).
        seed: env seed; rank r of a multi-process run uses ``seed + r`` (and a fresh offset whenever the training
            stream restarts, e.g. after resuming); evaluation envs use ``seed + 10_000``.
        val_episodes: greedy episodes per validation / test (one env each, their first episode).
        collector_workers: 0 (default) collects in the training process with a TorchRL ``Collector``; ``N >= 1``
            collects with a ``MultiCollector`` over N worker processes (``num_envs / N`` envs each), whose policy
            copies receive the learner's weights after every collection's updates. Exact resume needs 0.
        reanalyze_fraction: reanalyze (MuZero, seeds 003/004), off at 0. The share of each training batch's
            episodes (at least one when > 0) whose stored MCTS visit distributions are recomputed with the latest
            model (``EmotionAgent.reanalyze``: a fresh search on every real prefix) before the update; the refreshed
            distributions are also written back into the replay. Costs one search per reanalysed step.
        context_window: ``None`` (default): the history is the whole episode (spec 1.3) and a training batch is
            ``batch_size`` whole episodes. ``K``: the agent reads the most recent ``K`` real steps, when it acts (the
            policy's ``history_window``) as when it trains, and a training batch is ``batch_size`` windows of up to
            ``K`` steps (:meth:`EpisodeReplay.sample_windows`). Linked into ``EmotionAgent(context_window=...)`` by the
            CLI. Training and planning cost then stop growing with the episode length (README, "Context window").
        time_limit: overrides the env's registered time limit (``max_episode_steps``; also the stored episode
            length). Named apart from the ``max_episode_steps`` property, which the CLI links into the model, so
            that Lightning's merged hparams never hold two values under one name.

    The policy comes from the LightningModule: ``trainer.lightning_module.make_policy(greedy)``, called once per
    training stream and once per evaluation; the evaluation policy must be a different object from the training
    one (each keeps its own histories). The datamodule sets the policy's ``action_spec`` from the env it builds,
    and sets the training policy's ``frames`` (which drive its temperature schedule) to the env steps this
    datamodule has collected, a counter saved in its ``state_dict``, so the schedule resumes from checkpoints.

    Training batch (README, "Data flow"): TensorDict [] with ``episodes`` [B, L] (see :class:`EpisodeAssembler`,
    ``L`` = longest episode in the batch) and ``stats`` []: ``env_steps`` and ``episodes`` (totals of this
    process), ``episode_return`` (mean undiscounted return of the episodes finished since the previous batch, NaN
    if none), ``emotion_usage`` [E] (fraction of each emotion among the steps collected since the previous batch,
    NaN if none) and ``temperature`` (the policy's current temperature). Validation / test batch: TensorDict []
    with ``episode_return`` float [val_episodes] and ``episode_length`` long [val_episodes].
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: int = 8,
        frames_per_batch: int = 256,
        batch_size: int = 16,
        updates_per_collection: int = 4,
        replay_capacity: int = 1000,
        warmup_episodes: int = 16,
        gamma: float = 0.99,
        seed: int = 0,
        val_episodes: int = 10,
        time_limit: int | None = None,
        collector_workers: int = 0,
        reanalyze_fraction: float = 0.0,
        context_window: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.env_id = env_id
        self.num_envs = _check_int("num_envs", num_envs, 1)
        self.frames_per_batch = _check_int("frames_per_batch", frames_per_batch, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.updates_per_collection = _check_int("updates_per_collection", updates_per_collection, 1)
        self.replay_capacity = _check_int("replay_capacity", replay_capacity, 1)
        self.warmup_episodes = _check_int("warmup_episodes", warmup_episodes, 0)
        if not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"EmotionDataModule: gamma must be in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        self.seed = _check_int("seed", seed, 0)
        self.val_episodes = _check_int("val_episodes", val_episodes, 1)
        self.collector_workers = _check_int("collector_workers", collector_workers, 0)
        if isinstance(reanalyze_fraction, bool) or not isinstance(reanalyze_fraction, (int, float)):
            raise ValueError(
                f"EmotionDataModule: reanalyze_fraction must be a number in [0, 1], got {reanalyze_fraction!r}"
            )
        if not 0.0 <= reanalyze_fraction <= 1.0:
            raise ValueError(f"EmotionDataModule: reanalyze_fraction must be in [0, 1], got {reanalyze_fraction!r}")
        self.reanalyze_fraction = float(reanalyze_fraction)
        self.context_window = None if context_window is None else _check_int("context_window", context_window, 1)
        if self.context_window is not None and self.reanalyze_fraction:
            raise ValueError(
                "EmotionDataModule: reanalyze_fraction > 0 needs whole episodes (it re-searches every real prefix "
                "from step 0); set context_window: null or reanalyze_fraction: 0"
            )
        self.reanalysed_steps = 0
        if self.collector_workers and self.num_envs % self.collector_workers:
            raise ValueError(
                f"EmotionDataModule: num_envs ({num_envs}) must be a multiple of collector_workers "
                f"({collector_workers}): each worker process runs num_envs / collector_workers envs"
            )
        self.env_info = probe_env(env_id, time_limit)
        self.time_limit = time_limit
        # The data stream draws from its own generators (replay sampling; emotion and action draws of the training
        # policy), seeded from ``seed`` and the rank and saved in checkpoints, so a resumed run continues them.
        self.policy_rng = torch.Generator()
        self.replay = EpisodeReplay(self.replay_capacity)
        self._seed_generators(rank=0)
        self.env_steps = 0
        self.episodes = 0
        self.stream_starts = 0
        self._resumed_rng: dict | None = None
        self._worker_collectors: list[MultiCollector] = []

    # -------------------------------------------------------------- env facts (linked into the LightningModule)
    @property
    def obs_dim(self) -> int:
        return self.env_info.obs_dim

    @property
    def n_actions(self) -> int:
        return self.env_info.n_actions

    @property
    def max_episode_steps(self) -> int:
        return self.env_info.max_episode_steps

    # -------------------------------------------------------------- helpers
    def _rank(self) -> int:
        trainer = self.trainer
        return int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0

    def _seed_generators(self, rank: int) -> None:
        self.policy_rng.manual_seed(self.seed + rank)
        self.replay.seed(self.seed + rank + 1_000_003)

    def setup(self, stage: str) -> None:
        """Seed the stream's generators for this process's rank (a checkpoint loaded afterwards replaces them)."""
        self._seed_generators(self._rank())

    def make_policy(self, greedy: bool):
        """The policy to act with: ``trainer.lightning_module.make_policy(greedy)`` (override in tests)."""
        if self.trainer is None or getattr(self.trainer, "lightning_module", None) is None:
            raise RuntimeError(
                "EmotionDataModule needs a policy: attach it to a Trainer with a LightningModule that has "
                "make_policy(greedy), or override EmotionDataModule.make_policy"
            )
        return self.trainer.lightning_module.make_policy(greedy=greedy)

    def _check_context(self, policy) -> None:
        """Refuse, before any episode is played, a policy whose history cannot hold this env's longest episode."""
        keeps = getattr(policy, "context_length", None)
        if self.context_window is not None and keeps is not None and keeps != self.context_window:
            raise ValueError(
                f"the datamodule trains on windows of context_window={self.context_window} steps but the policy "
                f"plans on {keeps}; give the agent the same context_window (the CLI links data.context_window into "
                "the model)"
            )
        if keeps is not None and not getattr(policy, "history_window", False) and keeps < self.max_episode_steps:
            raise ValueError(
                f"the policy keeps histories of up to {keeps} steps but {self.env_id}'s episodes last up to "
                f"{self.max_episode_steps} steps (time limit); build the model with context_length >= "
                f"{self.max_episode_steps + 1} (EmotionAgent(max_episode_steps={self.max_episode_steps}) does), lower "
                "the datamodule's time_limit, or use a policy with history_window=True"
            )

    def make_env(self, num_envs: int, seed: int) -> EnvBase:
        return make_env(self.env_id, num_envs, seed=seed, max_episode_steps=self.time_limit)

    # -------------------------------------------------------------- training stream
    def _training_batches(self) -> Iterator[TensorDict]:
        env_seed = self.seed + self._rank() + 100_003 * self.stream_starts
        self.stream_starts += 1
        policy = self.make_policy(greedy=False)
        self._check_context(policy)
        policy_rng_state = self.policy_rng.get_state()
        collector = self._make_collector(policy, env_seed)
        # The collector runs the policy once at construction to discover its output keys. Undo what that step did:
        # the temperature schedule follows this process's collected env steps (checkpointed here), and the policy's
        # generator goes back to its state before that step. On resume, the process RNG is restored here too, so
        # the stream continues as the interrupted one would have.
        policy.frames.fill_(self.env_steps)
        self.policy_rng.set_state(policy_rng_state)
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None
        assembler = EpisodeAssembler(self.max_episode_steps, self.gamma)
        pending_emotions: torch.Tensor | None = None
        try:
            for batch in collector:
                if batch.batch_dims > 2:  # MultiCollector: [workers, envs per worker, steps] -> [envs, steps]
                    batch = batch.reshape(-1, batch.batch_size[-1])
                emotions = batch.get("emotion").reshape(-1).to("cpu")
                n_emotions = batch.get("visit_distribution").shape[-1]
                counts = torch.bincount(emotions, minlength=n_emotions).double()
                pending_emotions = counts if pending_emotions is None else pending_emotions + counts
                self.env_steps += batch.numel()
                episodes = assembler.ingest(batch)
                if episodes is not None:
                    self.replay.extend(episodes)
                    self.episodes += episodes.batch_size[0]
                if len(self.replay) < max(self.warmup_episodes, 1):
                    continue
                for _ in range(self.updates_per_collection):
                    returns, _lengths = assembler.drain_finished()
                    episode_return = sum(returns) / len(returns) if returns else math.nan
                    if pending_emotions is not None and pending_emotions.sum() > 0:
                        usage = (pending_emotions / pending_emotions.sum()).float()
                    else:
                        usage = torch.full((n_emotions,), math.nan)
                    pending_emotions = None
                    stats = TensorDict(
                        {
                            "env_steps": torch.tensor(self.env_steps, dtype=torch.long),
                            "episodes": torch.tensor(self.episodes, dtype=torch.long),
                            "episode_return": torch.tensor(episode_return, dtype=torch.float32),
                            "emotion_usage": usage,
                            "temperature": torch.tensor(policy.temperature, dtype=torch.float32),
                        },
                        batch_size=[],
                    )
                    yield TensorDict({"episodes": self._sample_batch(), "stats": stats}, batch_size=[])
                if self.collector_workers:  # the learner's latest weights (and temperature) reach the workers
                    policy.frames.fill_(self.env_steps)
                    collector.update_policy_weights_()
        finally:
            try:
                collector.shutdown()
            except ImportError:  # the stream was dropped at interpreter exit: nothing left to release
                pass

    def _sample_batch(self) -> TensorDict:
        """A training batch of whole episodes (windows with ``context_window``); with ``reanalyze_fraction`` > 0,
        that share of them reanalysed first."""
        if self.context_window is not None:
            return self.replay.sample_windows(self.batch_size, self.context_window)
        if not self.reanalyze_fraction:
            return self.replay.sample(self.batch_size)
        sampled = self.replay.sample(self.batch_size, with_index=True)
        episodes, index = sampled["episodes"], sampled["index"]
        count = max(1, round(self.reanalyze_fraction * self.batch_size))
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "reanalyze"):
            raise RuntimeError(
                "EmotionDataModule: reanalyze_fraction > 0 needs a LightningModule with reanalyze(episodes) "
                "(EmotionAgent has one); set reanalyze_fraction: 0 otherwise"
            )
        fresh = module.reanalyze(episodes[:count].to(module.device)).to(episodes.device)
        episodes.get("visit_distribution")[:count] = fresh
        self.replay.refresh(index[:count], "visit_distribution", fresh)
        self.reanalysed_steps += int(episodes.get("mask")[:count].sum())
        return episodes

    def _make_collector(self, policy, env_seed: int) -> Collector | MultiCollector:
        """The training collector: in this process (``collector_workers=0``), or a ``MultiCollector`` over workers.

        In process: one ``Collector`` over ``num_envs`` envs, and the policy draws from :attr:`policy_rng` (saved in
        checkpoints: exact resume). Workers: ``MultiCollector(sync=True)`` with ``num_envs / collector_workers`` envs
        per worker process, each with its own copy of the policy; ``set_seed`` gives each worker's envs and torch RNG
        a seed of its own (from ``env_seed``), and TorchRL's weight updater sends the learner's weights after every
        collection's updates. The workers' random draws are not in checkpoints.
        """
        frames_per_batch = -(-self.frames_per_batch // self.num_envs) * self.num_envs
        if not self.collector_workers:
            env = self.make_env(self.num_envs, env_seed)
            policy.action_spec = env.action_spec
            if hasattr(policy, "generator"):
                policy.generator = self.policy_rng
            return Collector(env, policy, frames_per_batch=frames_per_batch, total_frames=-1)
        per_worker = self.num_envs // self.collector_workers
        make_worker_env = functools.partial(make_env, self.env_id, per_worker, max_episode_steps=self.time_limit)
        probe = make_worker_env()
        policy.action_spec = probe.action_spec.clone()
        if not probe.is_closed:
            probe.close()
        if hasattr(policy, "generator"):
            policy.generator = None  # each worker draws from its own seeded torch RNG
        collector = MultiCollector(
            [make_worker_env] * self.collector_workers,
            policy,
            frames_per_batch=frames_per_batch,
            total_frames=-1,
            sync=True,
        )
        collector.set_seed(env_seed)
        # The stream's `finally` shuts the workers down when the stream ends. A run that fails keeps the stream alive
        # as long as its traceback is held, and the workers are not daemons: shut them down at teardown or exit too.
        self._worker_collectors.append(collector)
        if len(self._worker_collectors) == 1:
            atexit.register(self._shutdown_workers)
        return collector

    def _shutdown_workers(self) -> None:
        while self._worker_collectors:
            collector = self._worker_collectors.pop()
            try:
                collector.shutdown(raise_on_error=False)
                # TorchRL 0.14's MultiCollector leaves its weight-sync scheme to be shut down by __del__; at
                # interpreter exit that starts a queue thread and hangs the process. Shut it down here.
                for scheme in (getattr(collector, "_weight_sync_schemes", None) or {}).values():
                    scheme.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown / interpreter exit
                pass

    def teardown(self, stage: str) -> None:
        self._shutdown_workers()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self._training_batches), batch_size=None, collate_fn=_identity)

    # -------------------------------------------------------------- evaluation stream
    def _evaluation(self) -> Iterator[TensorDict]:
        policy = self.make_policy(greedy=True)
        self._check_context(policy)
        env = self.make_env(self.val_episodes, self.seed + 10_000)
        try:
            result = evaluate_policy(env, policy, self.max_episode_steps)
        finally:
            env.close()
        yield result

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self._evaluation), batch_size=None, collate_fn=_identity)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self._evaluation), batch_size=None, collate_fn=_identity)

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """Everything the data stream needs to continue (README, "Resuming"); loads with ``weights_only=True``.

        Replay contents and its sampling generator, the training policy's generator, the counters (env steps,
        which also place the temperature schedule; episodes; stream starts, which offset the env seeds of the next
        stream) and the process's global RNG states. Not saved: the environments' internal state and unfinished
        episodes (TorchRL has no API to save an env mid-episode): a resumed stream starts fresh episodes on envs
        seeded with a new offset, and the steps of episodes unfinished at the checkpoint are not in the replay.
        """
        return {
            "replay": self.replay.state_dict(),
            "policy_rng": self.policy_rng.get_state(),
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "stream_starts": self.stream_starts,
            "rng": rng_state(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        missing = {"replay", "policy_rng", "env_steps", "episodes", "stream_starts", "rng"} - set(state_dict)
        if missing:
            raise CheckpointError(
                f"the checkpoint's EmotionDataModule state lacks {sorted(missing)}: it was written by another version "
                "of emotion_rl or another datamodule. Start a new run, or load only the model weights with "
                "EmotionAgent.load_from_checkpoint."
            )
        self.replay.load_state_dict(state_dict["replay"])
        self.policy_rng.set_state(state_dict["policy_rng"])
        self.env_steps = int(state_dict["env_steps"])
        self.episodes = int(state_dict["episodes"])
        self.stream_starts = int(state_dict["stream_starts"])
        self._resumed_rng = state_dict["rng"]  # restored when the training stream resumes (_training_batches)


def _identity(batch):
    return batch
