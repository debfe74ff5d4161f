"""EmotionDataModule: the Lightning face of the data side (self-play stream, replay, evaluation, checkpoints)."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator

import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import MultiCollector
from torchrl.envs import EnvBase

from emotion_rl.checkpoint import CheckpointError, rng_state, set_rng_state
from emotion_rl.data.checks import check_agent, check_batches, check_context, check_fraction, check_int
from emotion_rl.data.endings import EpisodeEndings
from emotion_rl.data.envs import make_env, probe_env
from emotion_rl.data.episodes import EpisodeAssembler
from emotion_rl.data.novelty import NoveltyBonus
from emotion_rl.data.rate import UpdateRate
from emotion_rl.data.replay import EpisodeReplay
from emotion_rl.data.rollout import evaluate_policy
from emotion_rl.data.selfplay import (
    Bootstrapper,
    Reanalyzer,
    SelfPlayAgent,
    SelfPlayCounters,
    make_collector,
    self_play,
    shutdown_collector,
)

__all__ = ["EmotionDataModule"]


class _Stream(IterableDataset):
    """An IterableDataset whose iterator is produced by a callable (so it reads the datamodule's live state)."""

    def __init__(self, make_iterator: Callable[[], Iterator[TensorDict]]) -> None:
        super().__init__()
        self._make_iterator = make_iterator

    def __iter__(self) -> Iterator[TensorDict]:
        return self._make_iterator()


def _identity(batch: TensorDict) -> TensorDict:
    return batch


class EmotionDataModule(LightningDataModule):
    """Self-play data for the emotion MCTS agent (spec 5); the data flow is described in docs/data.md.

    Args:
        env_id: gymnasium env id (1-D Box observations, Discrete actions), or gymnasium's ``module:EnvId`` (the
            module is imported first, to register the env).
        env_kwargs: keyword arguments of ``gymnasium.make`` (or of ``env_factory``), e.g. ``{"max_episode_steps":
            100}`` or an env's own options.
        env_wrappers: gymnasium wrapper classes by import path (``"pkg.module.Wrapper"``), applied innermost first.
        env_factory: ``"pkg.module:function"`` (or ``"pkg.module.Class"``) returning one unbatched TorchRL
            ``EnvBase``; replaces ``env_id`` (sizes from its specs; its time limit: ``time_limit``, or a
            ``StepCounter(max_steps)`` among its transforms).
        num_envs: envs stepped together (one batched search per step).
        frames_per_batch: env steps per collection over all envs (rounded up to a multiple of ``num_envs``).
        batch_size: episodes (windows, with ``context_window``) per training batch.
        updates_per_collection: training batches after each collection (spec 5 steps 8-9, decision 16); ``None``
            (default): 4, or what ``replay_ratio`` asks for.
        replay_ratio: trained step-samples per collected env step, ``batch_size * context_window *
            updates_per_collection / frames_per_batch``: sets ``updates_per_collection`` (fractional rates carried
            between collections; :class:`~emotion_rl.data.rate.UpdateRate`). Needs windows; ``None``: off.
        replay_capacity: episodes kept (FIFO).
        replay_capacity_steps: env steps kept (FIFO, whole episodes evicted oldest first once the stored steps exceed
            it; at least the env's longest episode); ``None`` (default): only ``replay_capacity`` bounds the replay.
        warmup_episodes: finished episodes needed before the first training batch (at least 1).
        gamma: discount of the returns (spec 2.2.2).
        seed: env and stream seed; rank r uses ``seed + r``; evaluation envs ``seed + 10_000``.
        val_episodes: greedy episodes per validation / test (one env each, its first episode).
        time_limit: overrides the env's registered episode limit (and the stored episode length).
        collector_workers: 0 collects in this process; N collects in N worker processes (no exact resume).
        reanalyze_fraction: share of each whole-episode batch whose search targets are recomputed by the agent
            (``Reanalyzer``) and written back to the replay; 0 (off) by default.
        context_window: ``None``: whole episodes (spec 1.3). ``K``: batches of windows of up to ``K`` steps, the
            history a policy with ``context_window=K`` planned on (decision 15); the CLI links it into the agent.
        total_frames: env steps to collect before training stops (TorchRL's name); -1 (default): no budget. The
            batches of the collection that reaches it are trained, then ``stats["total_frames_reached"]`` tells
            the agent to stop (``EmotionAgent.train_batch`` sets ``trainer.should_stop``).
        window_weighting: ``"end"`` (default): window ends uniform over stored steps, every valid step weighs 1, so
            an episode's last steps weigh less. ``"uniform"``: windows also carry ``weight`` (every stored step the
            same expected weight; :meth:`EpisodeReplay.sample_windows`). Whole episodes are uniform already.
        novelty_weight: exploration by surprise (beyond the specification; docs/data.md, "Novelty"): every step
            stores a bonus, ``novelty_weight`` times the model's surprise there (``||predicted - real next
            observation||^2`` with the prediction the policy acted on), which every value target adds to the
            reward (the stored ``return`` included). 0 (default): the returns of spec 2.2.2.
        novelty_decay_frames: env steps over which the novelty weight falls linearly to 0 (0, default: constant).
        novelty_normalize: standardise the surprise by its running mean and variance (saved in checkpoints) and
            clip it to ``[-novelty_clip, novelty_clip]`` before the weight applies (:class:`NoveltyBonus`).
        novelty_clip: the bound of the standardised surprise (with ``novelty_normalize``).

    The agent is handed over with :meth:`connect` (the CLI does), or taken from the trainer's LightningModule in
    :meth:`setup`. Training batch: ``{"episodes": [B, L] (EPISODE_KEYS), "stats": []}``; validation / test batch:
    ``{"episode_return": [val_episodes], "episode_length": [val_episodes], "end_<class>": []}`` (:attr:`endings`).
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: int = 8,
        frames_per_batch: int = 256,
        batch_size: int = 16,
        updates_per_collection: int | None = None,
        replay_capacity: int = 1000,
        warmup_episodes: int = 16,
        gamma: float = 0.99,
        seed: int = 0,
        val_episodes: int = 10,
        time_limit: int | None = None,
        collector_workers: int = 0,
        reanalyze_fraction: float = 0.0,
        context_window: int | None = None,
        window_weighting: str = "end",
        env_kwargs: dict | None = None,
        env_wrappers: list[str] | None = None,
        env_factory: str | None = None,
        total_frames: int = -1,
        novelty_weight: float = 0.0,
        novelty_decay_frames: int = 0,
        novelty_normalize: bool = False,
        novelty_clip: float = 5.0,
        replay_capacity_steps: int | None = None,
        replay_ratio: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.frames_per_batch = check_int("frames_per_batch", frames_per_batch, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.replay_capacity = check_int("replay_capacity", replay_capacity, 1)
        self.warmup_episodes = check_int("warmup_episodes", warmup_episodes, 0)
        self.gamma = check_fraction("gamma", gamma, "in [0, 1]")
        self._set_novelty(novelty_weight, novelty_decay_frames, novelty_normalize, novelty_clip)
        self.seed = check_int("seed", seed, 0)
        self.val_episodes = check_int("val_episodes", val_episodes, 1)
        self.collector_workers = check_int("collector_workers", collector_workers, 0)
        self._set_batches(reanalyze_fraction, context_window, window_weighting, updates_per_collection, replay_ratio)
        if total_frames != -1:
            check_int("total_frames (-1: no budget)", total_frames, 1)
        self.total_frames = total_frames
        self._set_env(env_id, time_limit, env_kwargs, env_wrappers, env_factory)
        self.agent: SelfPlayAgent | None = None
        self._connected_explicitly = False
        self.reanalysed_steps = 0
        self.policy_rng = torch.Generator()  # the training policy's emotion and action draws
        self._set_replay(replay_capacity_steps)
        self._seed_generators(rank=0)
        self.counters = SelfPlayCounters()
        self._resumed_rng: dict | None = None
        self._worker_collectors: list[MultiCollector] = []
        self._last_warmup_log = -math.inf

    def _set_novelty(self, weight: float, decay_frames: int, normalize: bool, clip: float) -> None:
        """The novelty bonus every stored step keeps (:class:`NoveltyBonus`; its statistics are saved here)."""
        try:
            self.novelty = NoveltyBonus(weight, decay_frames, normalize, clip)
        except ValueError as error:
            raise ValueError(f"EmotionDataModule: {error}") from None
        self.novelty_weight = self.novelty.weight

    def _set_batches(
        self,
        reanalyze_fraction: float,
        context_window: int | None,
        window_weighting: str,
        updates_per_collection: int | None,
        replay_ratio: float | None,
    ) -> None:
        """Check and set what a training batch holds (windows or reanalysed episodes) and how many follow each
        collection (:class:`UpdateRate`); needs ``num_envs``, ``frames_per_batch``, ``batch_size`` and
        ``collector_workers`` set."""
        self.reanalyze_fraction = check_fraction("reanalyze_fraction", reanalyze_fraction)
        self.context_window = None if context_window is None else check_int("context_window", context_window, 1)
        frames = -(-self.frames_per_batch // self.num_envs) * self.num_envs  # what the collector collects
        try:
            self.rate = UpdateRate(updates_per_collection, replay_ratio, frames, self.batch_size, self.context_window)
        except ValueError as error:
            raise ValueError(f"EmotionDataModule: {error}") from None
        self.updates_per_collection = self.rate.per_collection
        check_batches(
            self.reanalyze_fraction, self.context_window, window_weighting, self.num_envs, self.collector_workers
        )
        self.window_weighting = window_weighting

    def _set_env(
        self,
        env_id: str,
        time_limit: int | None,
        env_kwargs: dict | None,
        env_wrappers: list[str] | None,
        env_factory: str | None,
    ) -> None:
        """Probe the env once (sizes, time limit: :class:`~emotion_rl.data.envs.EnvInfo`) and keep what makes more
        of it, and how its episodes end (:class:`EpisodeEndings`)."""
        self.env_id = self._make_id = env_id
        self.env_options = {
            "env_kwargs": dict(env_kwargs or {}),
            "env_wrappers": list(env_wrappers or []),
            "env_factory": env_factory,
        }
        self.env_info = probe_env(env_id, time_limit, **self.env_options)
        self.endings = EpisodeEndings.for_env(env_id, **self.env_options)  # why episodes end, where the env tells
        self.env_id = self.env_info.env_id
        self.time_limit = time_limit

    def _set_replay(self, replay_capacity_steps: int | None) -> None:
        """The replay of whole episodes, bounded by ``replay_capacity`` episodes and ``replay_capacity_steps``."""
        longest = self.env_info.max_episode_steps
        if replay_capacity_steps is not None:  # a replay smaller than one longest episode would evict it on arrival
            check_int("replay_capacity_steps (one longest episode at least)", replay_capacity_steps, longest)
        self.replay_capacity_steps = replay_capacity_steps
        self.replay = EpisodeReplay(self.replay_capacity, None, longest, capacity_steps=replay_capacity_steps)

    # -------------------------------------------------------------- env facts (linked into the agent by the CLI)
    @property
    def obs_dim(self) -> int:
        return self.env_info.obs_dim

    @property
    def n_actions(self) -> int:
        return self.env_info.n_actions

    @property
    def max_episode_steps(self) -> int:
        return self.env_info.max_episode_steps

    @property
    def env_steps(self) -> int:
        return self.counters.env_steps

    @property
    def episodes(self) -> int:
        return self.counters.episodes

    @property
    def stream_starts(self) -> int:
        return self.counters.stream_starts

    # -------------------------------------------------------------- the agent
    def connect(self, agent: SelfPlayAgent) -> EmotionDataModule:
        """Hand over the agent whose policies play (``make_policy(greedy)``) and, with ``reanalyze_fraction``,
        which reanalyses (``Reanalyzer``). Returns ``self``."""
        self._connect(agent, "the connected agent")
        self._connected_explicitly = True
        return self

    def _connect(self, agent: object, name: str) -> None:
        check_agent(agent, name, self.gamma, bool(self.reanalyze_fraction))
        self.agent = agent

    def _rank(self) -> int:
        trainer = self.trainer
        return int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0

    def _seed_generators(self, rank: int) -> None:
        self.policy_rng.manual_seed(self.seed + rank)
        self.replay.seed(self.seed + rank + 1_000_003)

    def setup(self, stage: str) -> None:
        """Seed the stream's generators for this rank (a checkpoint loaded afterwards replaces them). Without an
        explicitly connected agent, connect the trainer's LightningModule (it must be a ``SelfPlayAgent``)."""
        self._seed_generators(self._rank())
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if module is None:
            return
        if not self._connected_explicitly:
            self._connect(module, "the trainer's LightningModule")
        elif module is not self.agent:
            raise ValueError(
                "EmotionDataModule: the trainer fits another LightningModule than the agent connected with "
                "connect(); connect the module you fit"
            )

    def make_policy(self, greedy: bool) -> TensorDictModuleBase:
        """A fresh policy from the connected agent (one per stream: each keeps its own histories)."""
        if self.agent is None:
            raise RuntimeError(
                "EmotionDataModule has no agent: call connect(agent) or fit it with a Trainer whose "
                "LightningModule has make_policy(greedy)"
            )
        return self.agent.make_policy(greedy=greedy)

    def _check_context(self, policy: TensorDictModuleBase) -> None:
        """Refuse a policy that plans on other histories than the batches hold (decision 15)."""
        check_context(getattr(policy, "context_window", None), self.context_window, self.max_episode_steps, self.env_id)

    def make_env(self, num_envs: int, seed: int | None = None) -> EnvBase:
        """``num_envs`` envs of this datamodule's env and time limit (:func:`~emotion_rl.data.envs.make_env`)."""
        return self._env_maker()(num_envs, seed=seed)

    def _env_maker(self) -> Callable[..., EnvBase]:
        """``make_env`` with this datamodule's env settings bound (picklable: collector workers call it)."""
        return functools.partial(make_env, self._make_id, max_episode_steps=self.time_limit, **self.env_options)

    # -------------------------------------------------------------- training stream
    def _training_batches(self) -> Iterator[TensorDict]:
        if 0 < self.total_frames <= self.counters.env_steps:
            return  # the budget was spent (e.g. a run resumed after it): nothing more to collect
        env_seed = self.seed + self._rank() + 100_003 * self.counters.stream_starts
        self.counters.stream_starts += 1
        policy = self.make_policy(greedy=False)
        self._check_context(policy)
        policy_rng_state = self.policy_rng.get_state()
        collector = make_collector(
            policy,
            self._env_maker(),
            self.num_envs,
            self.frames_per_batch,
            env_seed,
            workers=self.collector_workers,
            generator=self.policy_rng,
        )
        if isinstance(collector, MultiCollector):
            self._worker_collectors.append(collector)  # the workers are not daemons: shut down at teardown or exit
            if len(self._worker_collectors) == 1:
                atexit.register(self.shutdown)
        # Undo the policy call the collector makes at construction (docs/data.md, "Resuming").
        policy.frames.fill_(self.counters.env_steps)
        self.policy_rng.set_state(policy_rng_state)
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None
        yield from self_play(
            collector,
            policy,
            self.make_assembler(),
            self.replay,
            self.counters,
            self._sample_batch,
            self.warmup_episodes,
            self.updates_per_collection,
            self.total_frames,
            self._warmup_progress,
        )

    def make_assembler(self) -> EpisodeAssembler:
        """The training stream's episode assembler: this datamodule's time limit, ``gamma``, novelty bonus and
        endings, and the connected agent's ``bootstrap`` (a :class:`Bootstrapper`: the values its value estimator
        asks to store with each episode cut by the time limit; docs/data.md, "The value after a truncation")."""
        bootstrap = self.agent.bootstrap if isinstance(self.agent, Bootstrapper) else None
        return EpisodeAssembler(
            self.max_episode_steps, self.gamma, novelty=self.novelty, bootstrap=bootstrap, endings=self.endings
        )

    def _warmup_progress(self, stored: int, needed: int) -> None:
        """One log line per collection while the replay fills (at most every 2 seconds, and the first)."""
        now = time.monotonic()
        if now - self._last_warmup_log >= 2.0:
            self._last_warmup_log = now
            rank_zero_info(f"emotion_rl: warm-up: {stored}/{needed} episodes stored ({self.env_steps} env steps)")

    def _sample_batch(self) -> TensorDict:
        """A training batch: windows (``context_window``) or whole episodes, ``reanalyze_fraction`` of them
        reanalysed by the agent first (and written back to the replay)."""
        if self.context_window is not None:
            return self.replay.sample_windows(self.batch_size, self.context_window, self.window_weighting)
        if not self.reanalyze_fraction:
            return self.replay.sample(self.batch_size)
        sampled = self.replay.sample(self.batch_size, with_index=True)
        episodes, index = sampled["episodes"], sampled["index"]
        count = max(1, round(self.reanalyze_fraction * self.batch_size))
        if not isinstance(self.agent, Reanalyzer):
            raise RuntimeError("EmotionDataModule: reanalyze_fraction > 0 needs a connected agent with reanalyze()")
        fresh = self.agent.reanalyze(episodes[:count].to(self.agent.device)).to(episodes.device)
        episodes.get("policy_target")[:count] = fresh
        self.replay.refresh(index[:count], "policy_target", fresh)
        self.reanalysed_steps += int(episodes.get("mask")[:count].sum())
        return episodes

    def shutdown(self) -> None:
        """Stop the training stream's collector workers (teardown and exit call it; calling it again does nothing)."""
        while self._worker_collectors:
            shutdown_collector(self._worker_collectors.pop())

    def teardown(self, stage: str) -> None:
        self.shutdown()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self._training_batches), batch_size=None, collate_fn=_identity)

    # -------------------------------------------------------------- evaluation stream
    def evaluate(self, policy: TensorDictModuleBase, episodes: int, seed: int) -> TensorDict:
        """``evaluate_policy`` of ``policy`` on ``episodes`` fresh envs seeded by ``seed``: the same start states on
        every call (validation: ``val_episodes`` and ``seed + 10_000``)."""
        env = self.make_env(episodes, seed)
        try:
            return evaluate_policy(env, policy, self.max_episode_steps)
        finally:
            env.close()

    def _evaluation(self) -> Iterator[TensorDict]:
        policy = self.make_policy(greedy=True)
        self._check_context(policy)
        result = self.evaluate(policy, self.val_episodes, self.seed + 10_000)
        shares = self.endings.evaluation_shares(result)  # why the greedy episodes ended, as training records it
        yield result.select("episode_return", "episode_length").update({f"end_{k}": v for k, v in shares.items()})

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self._evaluation), batch_size=None, collate_fn=_identity)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self._evaluation), batch_size=None, collate_fn=_identity)

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """What the stream needs to continue (docs/data.md, "Resuming"); loads with ``weights_only=True``."""
        return {
            "replay": self.replay.state_dict(),
            "policy_rng": self.policy_rng.get_state(),
            **dataclasses.asdict(self.counters),  # env_steps, episodes, stream_starts, trained_steps, update_credit
            "rng": rng_state(),
            "novelty": self.novelty.state_dict(),
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
        # older checkpoints lack trained_steps and update_credit: the effective ratio then counts from the resume
        counters = {f.name: state_dict[f.name] for f in dataclasses.fields(SelfPlayCounters) if f.name in state_dict}
        self.counters = SelfPlayCounters(**counters)
        if "novelty" in state_dict:  # checkpoints written before the novelty statistics keep fresh ones
            self.novelty.load_state_dict(state_dict["novelty"])
        self._resumed_rng = state_dict["rng"]  # restored when the training stream starts (_training_batches)
