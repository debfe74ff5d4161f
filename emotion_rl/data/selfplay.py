"""The self-play training stream (spec 5): collect with the policy, store whole episodes, yield training batches."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector, MultiCollector
from torchrl.envs import EnvBase

from emotion_rl.data.endings import ending_shares
from emotion_rl.data.episodes import EpisodeAssembler, surprise
from emotion_rl.data.replay import EpisodeReplay
from emotion_rl.mcts.root_gap import ROOT_GAP_KEYS

__all__ = [
    "Bootstrapper",
    "CollectionStats",
    "Reanalyzer",
    "SelfPlayAgent",
    "SelfPlayCounters",
    "acting_changes",
    "closing_collector",
    "make_collector",
    "replay_stats",
    "search_improvement",
    "self_play",
    "shutdown_collector",
]


CollectorT = TypeVar("CollectorT", Collector, MultiCollector)


@runtime_checkable
class SelfPlayAgent(Protocol):
    """What the data side needs from the learner: a fresh policy to act with (``EmotionAgent`` is one)."""

    def make_policy(self, greedy: bool = False) -> TensorDictModuleBase: ...


@runtime_checkable
class Reanalyzer(Protocol):
    """A learner that can recompute the search targets of stored episodes (``reanalyze_fraction > 0``)."""

    device: torch.device

    def reanalyze(self, episodes: TensorDict) -> torch.Tensor: ...


@runtime_checkable
class Bootstrapper(Protocol):
    """A learner whose value estimator may ask for values stored with episodes cut by the time limit (``EmotionAgent``
    is one): ``bootstrap(episodes [K, L]) -> [K]`` in reward units, or ``None`` when it asks for none. The data side
    stores them, discounted, as each step's ``bootstrap`` (docs/data.md, "The value after a truncation")."""

    def bootstrap(self, episodes: TensorDict) -> torch.Tensor | None: ...


@dataclass
class SelfPlayCounters:
    """Totals of this process, saved in checkpoints: env steps (they place the temperature schedule), finished
    episodes, training streams started (they offset the env seeds of the next stream), step-samples trained (valid
    steps of the batches yielded: the effective replay ratio) and the fraction of a training batch carried to the
    next collection (a fractional ``updates_per_collection``)."""

    env_steps: int = 0
    episodes: int = 0
    stream_starts: int = 0
    trained_steps: int = 0
    update_credit: float = 0.0

    def updates(self, per_collection: float, reached: bool) -> int:
        """The training batches of this collection: ``floor(carry + per_collection)`` (at least one when the
        budget was reached, so the stream's last batch says so), the remainder carried."""
        credit = self.update_credit + per_collection
        updates = math.floor(credit + 1e-9)  # a fraction that should be whole is not lost to rounding
        updates = max(updates, 1) if reached else updates
        self.update_credit = credit - updates
        return updates


def search_improvement(
    target: torch.Tensor, prior: torch.Tensor, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per state, how far the search moved from the policy head: ``KL(target || prior)`` of the search's policy
    target (the visit distribution under the pUCT root, the improved policy under the Gumbel root) and whether
    ``argmax(target) == argmax(prior)``, both float ``[*B]`` from ``[*B, E]`` inputs.

    Zero-weight emotions add nothing (``0 * log 0 = 0``); the prior is clamped to ``eps`` so the KL stays finite.
    """
    target = target.detach().to(torch.float64)
    prior = prior.detach().to(torch.float64)
    kl = (torch.xlogy(target, target) - target * prior.clamp_min(eps).log()).sum(-1)
    agree = (target.argmax(-1) == prior.argmax(-1)).to(torch.float64)
    return kl, agree


def acting_changes(batch: TensorDict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per acted state of a collector batch, whether choosing the emotion changed the agent's choice: float
    ``(action_changed, emotion_changed)`` ``[*B]``, or None when the batch lacks ``prior`` or ``action_changed``.

    ``emotion_changed``: the emotion acted on (``emotion``, spec 5 step 2: the search's, drawn with the
    temperature) is not the prior's argmax emotion (``argmax prior``, ties to the lowest index).
    ``action_changed``: :class:`~emotion_rl.policy.EmotionPolicy`'s ``action_changed``, the greedy action of the
    emotion acted on differs from the greedy action of the prior's argmax emotion (spec 5 step 3). A changed
    emotion whose action head agrees with the prior emotion's changes nothing the environment sees.
    """
    keys = batch.keys()
    if "prior" not in keys or "action_changed" not in keys:
        return None
    prior_emotion = batch.get("prior").cpu().argmax(-1)
    emotion_changed = (batch.get("emotion").cpu().reshape(prior_emotion.shape) != prior_emotion).to(torch.float64)
    action_changed = batch.get("action_changed").cpu().reshape(prior_emotion.shape).to(torch.float64)
    return action_changed, emotion_changed


class CollectionStats:
    """What was collected since the previous training batch: emotion usage, finished episodes' mean return, how
    much the search changed the policy head's prior and the agent's actions (when the batches carry ``prior`` and
    ``action_changed``), the search's root gaps at every state (when they carry ``ROOT_GAP_KEYS``), and what chose
    the emotions (``root_selected``: the root rule's own choice, or a temperature draw)."""

    def __init__(self) -> None:
        self.emotion_counts: torch.Tensor | None = None
        self.n_emotions = 0
        self._search_sums = torch.zeros(2, dtype=torch.float64)  # KL(target || prior), argmax agreement
        self._search_states = 0
        self._change_sums = torch.zeros(2, dtype=torch.float64)  # action changed, emotion changed
        self._change_states = 0
        self._surprise_sum, self._surprise_states = 0.0, 0  # the model's surprise, summed over states
        self._gaps: dict[str, list[torch.Tensor]] = {key: [] for key in ROOT_GAP_KEYS}
        self._root_selected, self._choices = 0, 0  # states whose emotion the root rule chose, of those that tell

    def add(self, batch: TensorDict) -> None:
        """Count the emotions of a collector batch ``[n_envs, steps]``, and sum its search-improvement numbers."""
        self.n_emotions = batch.get("policy_target").shape[-1]
        counts = torch.bincount(batch.get("emotion").reshape(-1).to("cpu"), minlength=self.n_emotions).double()
        self.emotion_counts = counts if self.emotion_counts is None else self.emotion_counts + counts
        if "prior" in batch.keys():
            kl, agree = search_improvement(batch.get("policy_target").cpu(), batch.get("prior").cpu())
            self._search_sums += torch.stack([kl.sum(), agree.sum()])
            self._search_states += kl.numel()
        changes = acting_changes(batch)
        if changes is not None:
            self._change_sums += torch.stack([changes[0].sum(), changes[1].sum()])
            self._change_states += changes[0].numel()
        if "root_selected" in batch.keys():
            self._root_selected += int(batch.get("root_selected").sum())
            self._choices += batch.get("root_selected").numel()
        if "predicted_observation" in batch.keys():  # the model's surprise at the states acted on
            error = surprise(batch.get("predicted_observation").cpu(), batch.get(("next", "observation")).cpu())
            seen = torch.isfinite(batch.get("predicted_observation").cpu()).all(-1)
            self._surprise_sum += float(error[seen].double().sum())
            self._surprise_states += int(seen.sum())
        for key in ROOT_GAP_KEYS:
            if key in batch.keys():
                gaps = batch.get(key).detach().reshape(-1).to("cpu", torch.float32)
                self._gaps[key].append(gaps[torch.isfinite(gaps)])

    def take(self, returns: list[float], counters: SelfPlayCounters, temperature: float) -> TensorDict:
        """The ``stats`` of a training batch (NaN where nothing new was collected); starts a new tally.

        ``kl_target_prior``, ``argmax_agreement``, ``action_changed`` and ``emotion_changed``
        (:func:`acting_changes`) are means over the states collected since the last call; ``root_q_gap`` and
        ``root_action_gap`` float ``[n]`` hold each of those states' finite gap (empty when none). ``root_selected``
        is the share of the states whose emotion the root rule chose itself; ``temperature`` is NaN when every one
        of them was (no temperature draw acted: the Gumbel root chose every emotion, decision 25), else
        ``temperature``.
        """
        episode_return = sum(returns) / len(returns) if returns else math.nan
        if self.emotion_counts is not None and self.emotion_counts.sum() > 0:
            usage = (self.emotion_counts / self.emotion_counts.sum()).float()
        else:
            usage = torch.full((self.n_emotions,), math.nan)
        if self._search_states:
            kl, agreement = (self._search_sums / self._search_states).float()
        else:
            kl = agreement = torch.tensor(math.nan)
        if self._change_states:
            action_changed, emotion_changed = (self._change_sums / self._change_states).float()
        else:
            action_changed = emotion_changed = torch.tensor(math.nan)
        mean_surprise = self._surprise_sum / self._surprise_states if self._surprise_states else math.nan
        root_selected = self._root_selected / self._choices if self._choices else math.nan
        if self._choices and self._root_selected == self._choices:
            temperature = math.nan  # no draw used it
        self._root_selected, self._choices = 0, 0
        self.emotion_counts = None
        self._search_sums = torch.zeros(2, dtype=torch.float64)
        self._search_states = 0
        self._change_sums = torch.zeros(2, dtype=torch.float64)
        self._change_states = 0
        self._surprise_sum, self._surprise_states = 0.0, 0
        gaps = {key: torch.cat(parts) if parts else torch.zeros(0) for key, parts in self._gaps.items()}
        self._gaps = {key: [] for key in ROOT_GAP_KEYS}
        return TensorDict(
            {
                "env_steps": torch.tensor(counters.env_steps, dtype=torch.long),
                "episodes": torch.tensor(counters.episodes, dtype=torch.long),
                "episode_return": torch.tensor(episode_return, dtype=torch.float32),
                "emotion_usage": usage,
                "temperature": torch.tensor(temperature, dtype=torch.float32),
                "kl_target_prior": kl,
                "argmax_agreement": agreement,
                "action_changed": action_changed,
                "emotion_changed": emotion_changed,
                "surprise": torch.tensor(mean_surprise, dtype=torch.float32),
                "root_selected": torch.tensor(root_selected, dtype=torch.float32),
                **gaps,
            },
            batch_size=[],
        )


def replay_stats(replay: EpisodeReplay, counters: SelfPlayCounters) -> dict[str, torch.Tensor]:
    """What the replay holds and how hard it is reused: ``stored_steps``, ``stored_episodes`` and ``replay_ratio``,
    the valid step-samples trained so far per env step collected so far (the effective replay ratio)."""
    return {
        "stored_steps": torch.tensor(replay.stored_steps, dtype=torch.long),
        "stored_episodes": torch.tensor(len(replay), dtype=torch.long),
        "replay_ratio": torch.tensor(counters.trained_steps / max(counters.env_steps, 1), dtype=torch.float32),
    }


def make_collector(
    policy: TensorDictModuleBase,
    make_env: Callable[..., EnvBase],
    num_envs: int,
    frames_per_batch: int,
    env_seed: int,
    workers: int = 0,
    generator: torch.Generator | None = None,
) -> Collector | MultiCollector:
    """The training collector over ``num_envs`` envs made by ``make_env(num_envs, seed=None)`` (picklable with
    ``workers``): a ``Collector`` in this process (``workers=0``; the policy draws from ``generator``), or a
    synchronous ``MultiCollector`` over ``workers`` processes (``num_envs / workers`` envs each, seeded from
    ``env_seed``; their draws come from their own torch RNG).

    Devices (``workers=0``): the envs step where they were made (the CPU) and the batches are stored on the CPU,
    whatever the model's device; the policy is handed over as it is, with no ``policy_device``: an
    :class:`~emotion_rl.policy.EmotionPolicy` moves its inputs to its model's device and its outputs back itself.
    (Given a ``policy_device``, TorchRL would act with a copy of the policy as soon as one of its parameters or
    buffers lives elsewhere, e.g. the model on an accelerator and ``frames`` on the CPU: a copy moved to that
    device, whose ``frames`` (the temperature schedule's clock) with the accelerator as ``policy_device``, or
    whose weights with the CPU, are not the live ones.)"""
    frames_per_batch = -(-frames_per_batch // num_envs) * num_envs
    if not workers:
        env = make_env(num_envs, seed=env_seed)
        policy.action_spec = env.action_spec
        if hasattr(policy, "generator"):
            policy.generator = generator
        return Collector(
            env,
            policy,
            frames_per_batch=frames_per_batch,
            total_frames=-1,
            env_device=env.device,
            storing_device="cpu",
        )
    make_worker_env = functools.partial(make_env, num_envs // workers)
    probe = make_worker_env()
    policy.action_spec = probe.action_spec.clone()
    if not probe.is_closed:
        probe.close()
    if hasattr(policy, "generator"):
        policy.generator = None  # each worker draws from its own seeded torch RNG
    collector = MultiCollector(
        [make_worker_env] * workers, policy, frames_per_batch=frames_per_batch, total_frames=-1, sync=True
    )
    collector.set_seed(env_seed)
    return collector


def shutdown_collector(collector: Collector | MultiCollector) -> None:
    """Shut a collector down, its weight-sync schemes included; best effort (safe at teardown and at exit).

    Why the schemes: TorchRL 0.14's ``MultiCollector`` leaves its weight-sync scheme to the scheme's finaliser,
    which at interpreter exit starts a queue-feeder thread that never finishes, so a script that made a
    ``MultiCollector`` and did not close its schemes hangs on exit. Call this (or use :func:`closing_collector`)
    when done with any collector.
    """
    try:
        collector.shutdown(raise_on_error=False)
    except Exception:  # noqa: BLE001 - best effort at teardown / interpreter exit
        pass
    for scheme in list((getattr(collector, "_weight_sync_schemes", None) or {}).values()):
        try:
            scheme.shutdown()
        except Exception:  # noqa: BLE001 - best effort
            pass


@contextlib.contextmanager
def closing_collector(collector: CollectorT) -> Iterator[CollectorT]:
    """``with closing_collector(MultiCollector(...)) as collector:`` -> :func:`shutdown_collector` on leaving."""
    try:
        yield collector
    finally:
        shutdown_collector(collector)


def self_play(
    collector: Collector | MultiCollector,
    policy: TensorDictModuleBase,
    assembler: EpisodeAssembler,
    replay: EpisodeReplay,
    counters: SelfPlayCounters,
    sample_batch: Callable[[], TensorDict],
    warmup_episodes: int,
    updates_per_collection: float,
    total_frames: int = -1,
    on_warmup: Callable[[int, int], None] | None = None,
) -> Iterator[TensorDict]:
    """The training stream (spec 5 steps 1-9): after every collection, once the replay holds ``warmup_episodes``
    episodes (at least one), ``updates_per_collection`` batches ``{"episodes": sample_batch(), "stats"}`` (a
    fractional number is carried to the next collection: :meth:`SelfPlayCounters.updates`). The stats also say how
    many steps and episodes the replay keeps (``stored_steps``, ``stored_episodes``), the effective replay ratio
    (``replay_ratio``: valid step-samples trained so far per env step collected so far) and why the episodes
    finished since the previous batch ended (``endings``: the share of each of ``assembler.endings.names``).

    ``total_frames`` (> 0): the stream ends after the batches of the collection that reached that many env steps;
    the last batch's ``stats["total_frames_reached"]`` is True (the learner stops there). ``on_warmup(stored,
    needed)`` is called after each collection while the replay fills. A ``MultiCollector``'s workers get the
    learner's weights (and temperature) after each collection's updates. The collector is shut down at the end.
    """
    stats = CollectionStats()
    needed = max(warmup_episodes, 1)
    try:
        for batch in collector:
            _store(batch, stats, assembler, replay, counters)
            reached = 0 < total_frames <= counters.env_steps
            if len(replay) < needed and not (reached and len(replay)):  # the budget ends the warm-up too
                if on_warmup is not None:
                    on_warmup(len(replay), needed)
                continue
            updates = counters.updates(updates_per_collection, reached)
            for update in range(updates):
                training = sample_batch()
                last = reached and update == updates - 1
                yield _training_batch(training, stats, assembler, replay, counters, policy.temperature, last)
            if reached:
                return
            if isinstance(collector, MultiCollector):
                policy.frames.fill_(counters.env_steps)
                collector.update_policy_weights_()
    finally:
        try:
            collector.shutdown()
        except ImportError:  # the stream was dropped at interpreter exit: nothing left to release
            pass


def _store(
    batch: TensorDict,
    stats: CollectionStats,
    assembler: EpisodeAssembler,
    replay: EpisodeReplay,
    counters: SelfPlayCounters,
) -> None:
    """One collection into the stream's state: its stats tallied, its env steps counted, the episodes that ended
    in it assembled (``[n_envs, steps]``; a ``MultiCollector``'s ``[workers, envs, steps]`` flattened) and stored."""
    if batch.batch_dims > 2:  # MultiCollector: [workers, envs per worker, steps] -> [envs, steps]
        batch = batch.reshape(-1, batch.batch_size[-1])
    stats.add(batch)
    counters.env_steps += batch.numel()
    episodes = assembler.ingest(batch, counters.env_steps)
    if episodes is not None:
        replay.extend(episodes)
        counters.episodes += episodes.batch_size[0]


def _training_batch(
    training: TensorDict,
    stats: CollectionStats,
    assembler: EpisodeAssembler,
    replay: EpisodeReplay,
    counters: SelfPlayCounters,
    temperature: float,
    reached: bool,
) -> TensorDict:
    """``{"episodes": training, "stats"}`` (:func:`self_play`): the stats of what was collected since the previous
    batch, the replay's, the episodes' endings, and ``total_frames_reached`` (``reached``: the stream's last)."""
    counters.trained_steps += int(training.get("mask").sum())
    returns, _lengths = assembler.drain_finished()
    batch_stats = stats.take(returns, counters, temperature)
    batch_stats.update(replay_stats(replay, counters))
    shares = ending_shares(assembler.drain_endings(), assembler.endings.names)
    batch_stats.set("endings", TensorDict(shares, batch_size=[]))
    batch_stats.set("total_frames_reached", torch.tensor(reached))
    return TensorDict({"episodes": training, "stats": batch_stats}, batch_size=[])
