"""Episodes: collector batches cut into whole stored episodes with their returns (spec 2.2.2, 3.3)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives.value.functional import reward2go

from emotion_rl.data.endings import EpisodeEndings
from emotion_rl.data.novelty import NoveltyBonus
from emotion_rl.history import last_index

__all__ = ["EpisodeAssembler", "discounted_bootstrap", "discounted_returns", "surprise"]


def surprise(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """The model's surprise at each step ``[L]``: ``||predicted - actual||^2`` over the observation, 0 where nothing
    was predicted (NaN), from the imagined next state the planner acted on and the real one."""
    error = (predicted.to(actual.dtype) - actual).pow(2).sum(-1)
    return torch.nan_to_num(error, nan=0.0)


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_{t' >= t} gamma^(t' - t) r_t'`` over one whole episode ``[L]`` (spec 2.2.2), float32 ``[L]``.

    TorchRL's ``reward2go`` on float64 (its discount series stops at ``gamma^k < 1e-7``; docs/data.md). Literal:
    the sum stops at the episode's last step, also when it was truncated (no bootstrap).
    """
    values = rewards.detach().to("cpu", torch.float64).reshape(-1)
    if gamma == 0.0 or values.numel() == 0:  # reward2go's series needs gamma > 0
        out = values
    else:
        done = torch.zeros((1, values.numel()), dtype=torch.bool)
        done[0, -1] = True
        out = reward2go(values.unsqueeze(0), done, float(gamma), time_dim=-1).reshape(-1)
    return out.to(torch.float32).to(rewards.device)


def discounted_bootstrap(lengths: torch.Tensor, values: torch.Tensor, gamma: float, max_len: int) -> torch.Tensor:
    """``gamma^(T_k - t) * values[k]`` at step ``t < T_k`` of episode ``k`` of ``T_k = lengths[k]`` steps, 0 past its
    end: float32 ``[K, max_len]``, the discounted value of the state after each episode's last step, seen from each of
    its steps (what a return that does not stop at a time limit adds to ``G_t``). Computed in float64."""
    steps = torch.arange(max_len, dtype=torch.float64)
    ahead = lengths.to(torch.float64).unsqueeze(-1) - steps  # T - t
    out = torch.where(ahead > 0, float(gamma) ** ahead * values.to(torch.float64).unsqueeze(-1), 0.0)
    return out.to(torch.float32)


class EpisodeAssembler:
    """Cut collector batches into whole episodes (spec 3.3: states, actions, emotions, rewards, search targets).

    ``ingest(batch)`` takes a collector batch ``[n_envs, steps]`` (or ``[steps]``) and returns the episodes that
    ended in it, ``[K, max_len]`` with :data:`~emotion_rl.history.EPISODE_KEYS` (right-padded with zeros, ``mask``
    True on the valid prefix, ``action`` categorical), or ``None``. An episode runs from a step with ``is_init`` to
    a step with ``next/done``; each env's unfinished tail is continued by the next batch. Steps whose start was
    never seen, or cut by a reset without ``done``, are dropped and counted in ``dropped_steps``. ``terminated``
    and ``truncated`` come from ``next/terminated`` and ``next/truncated`` (absent: ``done & ~truncated``, False).

    Novelty (beyond the specification; docs/data.md, "Novelty"): each step stores ``novelty``, the bonus
    ``novelty(n_t, env_steps)`` (:class:`~emotion_rl.data.novelty.NoveltyBonus`) of the model's surprise ``n_t`` at
    step ``t`` (:func:`surprise` of the policy's ``predicted_observation`` and the real next observation, measured
    when the step was collected; 0 without a prediction), and ``return`` is the discounted sum of ``r_t +
    novelty_t``. The rewards themselves are stored unchanged; every value target reads ``reward + novelty``
    (:func:`~emotion_rl.losses.common.target_rewards`). ``novelty_weight`` is the shorthand for
    ``NoveltyBonus(novelty_weight)``; ``novelty`` (a bonus object, whose running statistics outlive the assembler)
    replaces it.

    Truncation (docs/data.md, "The value after a truncation"): each step stores ``bootstrap``, ``gamma^(T - t)
    V(s_T)`` (:func:`discounted_bootstrap`) for an episode of ``T`` steps cut by the time limit (``truncated`` and
    not ``terminated`` at its last step), with ``V(s_T) = bootstrap(episodes)[k]`` the value (in reward units) of the
    state after its last step, computed when the episode is stored by the value estimator that asks for it
    (``MonteCarlo(bootstrap_truncation=True)``, through ``EmotionAgent.bootstrap``); 0 after a termination, and
    everywhere when ``bootstrap`` is ``None`` or returns ``None`` (nothing asked). The ``return`` does not include
    it: the estimator that asked adds it.

    Each finished episode is also classified by ``endings`` (:class:`~emotion_rl.data.endings.EpisodeEndings`:
    terminated, truncated, the env's own reasons); :meth:`drain_endings` hands the classes over.
    """

    def __init__(
        self,
        max_len: int,
        gamma: float = 0.99,
        novelty_weight: float = 0.0,
        novelty: NoveltyBonus | None = None,
        bootstrap: Callable[[TensorDict], torch.Tensor | None] | None = None,
        endings: EpisodeEndings | None = None,
    ) -> None:
        if int(max_len) < 1:
            raise ValueError(f"EpisodeAssembler: max_len must be >= 1, got {max_len}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"EpisodeAssembler: gamma must be in [0, 1], got {gamma}")
        if not novelty_weight >= 0.0:
            raise ValueError(f"EpisodeAssembler: novelty_weight must be >= 0, got {novelty_weight}")
        self.max_len = int(max_len)
        self.gamma = float(gamma)
        self.novelty = NoveltyBonus(float(novelty_weight)) if novelty is None else novelty
        self.bootstrap = bootstrap
        self.endings = EpisodeEndings() if endings is None else endings
        self.finished_endings: list[dict[str, bool]] = []  # classes of the episodes emitted since the last drain
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

    def drain_endings(self) -> list[dict[str, bool]]:
        """How each episode emitted since the previous call ended (``endings.classify``), oldest first."""
        endings, self.finished_endings = self.finished_endings, []
        return endings

    @staticmethod
    def _steps(batch: TensorDictBase) -> TensorDict:
        n_dims = batch.batch_dims
        action = batch.get("action")
        if action.ndim > n_dims:  # one-hot encoded
            action = action.long().argmax(-1)

        def flat(key, default=None):
            value = batch.get(key, default)
            return value.reshape(batch.batch_size) if value.ndim > n_dims else value

        done = flat(("next", "done")).bool()
        truncated = flat(("next", "truncated"), torch.zeros_like(done)).bool()
        terminated = flat(("next", "terminated"), done & ~truncated).bool()

        extra = {}
        if "predicted_observation" in batch.keys():
            extra["predicted_observation"] = batch.get("predicted_observation").float()
        return TensorDict(
            {
                **extra,
                "observation": batch.get("observation").float(),
                "next_observation": batch.get(("next", "observation")).float(),
                "action": action.long(),
                "emotion": batch.get("emotion").long(),
                "reward": flat(("next", "reward")).float(),
                "done": done,
                "terminated": terminated,
                "truncated": truncated,
                "policy_target": batch.get("policy_target").float(),
                "is_init": flat("is_init").bool(),
            },
            batch_size=batch.batch_size,
        ).clone()  # own memory: unfinished episodes outlive the collector's batch

    def ingest(self, batch: TensorDictBase, env_steps: int = 0) -> TensorDict | None:
        """The episodes that ended in ``batch``, ``[K, max_len]``, or ``None``; ``env_steps``: the env steps
        collected so far (they place a decaying novelty weight)."""
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
                        episodes.append(self._finish(torch.cat(chunks, 0), env_steps))
                    chunks, begin = None, t + 1
            if chunks is not None:
                if n_steps > begin:
                    chunks.append(steps[env, begin:])
            elif n_steps > begin:
                self.dropped_steps += n_steps - begin
            self._open[env] = chunks
        if not episodes:
            return None
        return self._store_bootstrap(torch.stack(episodes, 0))

    def _store_bootstrap(self, episodes: TensorDict) -> TensorDict:
        """Set ``bootstrap`` ``[K, max_len]``: the discounted value after each truncated episode where it was asked
        for, 0 elsewhere."""
        lengths = episodes.get("mask").long().sum(-1)
        rows, last = torch.arange(lengths.numel()), last_index(episodes.get("mask"))
        cut = episodes.get("truncated")[rows, last] & ~episodes.get("terminated")[rows, last]
        values = torch.zeros(lengths.numel(), dtype=torch.float64)
        asked = self.bootstrap(episodes[cut]) if self.bootstrap is not None and bool(cut.any()) else None
        if asked is not None:
            values[cut] = asked.detach().to("cpu", torch.float64).reshape(-1)
        episodes.set("bootstrap", discounted_bootstrap(lengths, values, self.gamma, episodes.batch_size[1]))
        return episodes

    def _finish(self, episode: TensorDict, env_steps: int = 0) -> TensorDict:
        length = episode.batch_size[0]
        if length > self.max_len:
            raise RuntimeError(
                f"EpisodeAssembler: an episode of {length} steps exceeds max_len {self.max_len} "
                "(max_episode_steps of the env); raise max_episode_steps or check the env's time limit"
            )
        reward = episode.get("reward")
        self.finished_returns.append(float(reward.double().sum()))
        self.finished_lengths.append(length)
        last = episode[length - 1]
        self.finished_endings.append(
            self.endings.classify(bool(last["terminated"]), bool(last["truncated"]), last["next_observation"])
        )
        out = episode.exclude("is_init", "predicted_observation")
        bonus = torch.zeros(length, dtype=torch.float32)
        if self.novelty.weight and "predicted_observation" in episode.keys():
            predicted = episode.get("predicted_observation")
            measured = torch.isfinite(predicted).all(-1)
            bonus = self.novelty(surprise(predicted, episode.get("next_observation")), measured, env_steps)
            reward = reward + bonus
        out.set("novelty", bonus)
        out.set("return", discounted_returns(reward, self.gamma))
        out.set("mask", torch.ones(length, dtype=torch.bool))
        pad = self.max_len - length
        if pad:
            out = out.apply(lambda x: torch.cat([x, x.new_zeros((pad, *x.shape[1:]))], 0), batch_size=[self.max_len])
        return out
