"""What the emotions' action heads do in the states the search visits (issue 24, temperaments): do they differ, which
emotion acts, and, where they disagree, was the search's action the better one?

The search-gain measurement (:func:`emotion_rl.evaluation.gain.measure`) plays its ``search`` row through
:class:`HeadRecorder`, which records at every state of
each env's first episode the greedy action of every emotion's head (spec 2.1's ``action_logits`` at the root, as
the search returned them) and the emotion the search acted on. From those:

- **agreement** (:func:`head_agreement`): the share of emotion pairs whose heads' argmax actions agree, per state,
  averaged over the states; the ``E x E`` matrix of pairwise agreement; the share of states where all heads agree;
- **usage**: the share of the states in which each emotion acted;
- **the disagreement check** (:func:`check_disagreements`): at up to ``K`` states per episode where the heads do not
  all agree (a uniform sample of that episode's such states, drawn as they come: reservoir sampling), the search's
  action and every other action some head proposes are each played on a copy of the env, followed by the agent's
  own greedy search, for ``horizon`` steps or until the episode ends; the search was right at that state when its
  action's return is at least the best alternative's.

The copy is a ``copy.deepcopy`` of the gymnasium env (its wrappers, time limit included) taken before the real
step; the branches continue the real history in a policy of their own (:meth:`EmotionPolicy.set_histories`), so
the real episode is not disturbed. Only envs whose whole state deep-copies and whose step draws nothing at random
are accepted: gymnasium's CartPole, Acrobot and MountainCar (:data:`COPYABLE`). See docs/benchmarks.md, "Emotion
heads".
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from gymnasium.envs.classic_control import AcrobotEnv, CartPoleEnv, MountainCarEnv
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase, TransformedEnv

from emotion_rl.data.envs import make_env
from emotion_rl.evaluation.recording import RecordingPlanner
from emotion_rl.history import History
from emotion_rl.policy import EmotionPolicy

__all__ = ["COPYABLE", "BranchPoint", "HeadRecorder", "check_copyable", "check_disagreements", "head_agreement"]

COPYABLE = (CartPoleEnv, AcrobotEnv, MountainCarEnv)
"""Gymnasium envs a deep copy continues exactly: the whole state is ``unwrapped.state`` (plus CartPole's
``steps_beyond_terminated``) and ``step`` draws no random number."""


def check_copyable(settings: dict) -> None:
    """Refuse, before any episode is played, an env the disagreement check cannot copy (``settings`` as
    ``emotion_rl.evaluation.play.env_settings`` makes them: ``env_id``, ``time_limit`` and the env options)."""
    fix = "pass --disagreements 0 to measure without the check"
    if settings.get("env_factory") is not None:
        raise ValueError(
            f"the disagreement check plays on copies of gymnasium envs; env_factory {settings['env_factory']!r} "
            f"makes a TorchRL env it cannot copy: {fix}"
        )
    options = {key: settings.get(key) for key in ("env_kwargs", "env_wrappers")}
    env = make_env(settings["env_id"], 1, max_episode_steps=settings.get("time_limit"), **options)
    try:
        env.reset()  # starts the SerialEnv's worker
        gym_env = gym_envs(env)[0]
        if type(gym_env.unwrapped) not in COPYABLE:
            names = ", ".join(kind.__name__ for kind in COPYABLE)
            raise ValueError(
                f"the disagreement check plays on copies of the env and knows how to copy only {names} (gymnasium's "
                f"classic control); {settings['env_id']!r} is a {type(gym_env.unwrapped).__name__}: {fix}"
            )
        try:
            copy.deepcopy(gym_env)
        except Exception as err:  # noqa: BLE001 - any failure of a wrapper's copy is the same refusal
            raise ValueError(
                f"the disagreement check cannot copy {settings['env_id']!r} with its wrappers ({err}): {fix}"
            ) from err
    finally:
        env.close()


def gym_envs(env: EnvBase) -> list[gymnasium.Env]:
    """The gymnasium envs (wrappers included) inside ``make_env``'s ``TransformedEnv(SerialEnv([GymEnv, ...]))``, in
    batch order, once the env has started (reset). TorchRL offers no public accessor: this reads ``SerialEnv._envs``
    and ``GymEnv._env``."""
    base = env.base_env if isinstance(env, TransformedEnv) else env
    workers = None if base.is_closed else base.__dict__.get("_envs")  # SerialEnv's __getattr__ recurses without it
    found = [getattr(worker, "_env", None) for worker in workers or ()]
    if not found or any(not isinstance(one, gymnasium.Env) for one in found):
        raise RuntimeError(
            f"cannot reach the gymnasium envs inside {type(base).__name__}: TorchRL's SerialEnv/GymEnv layout changed"
        )
    return found


def head_agreement(greedy: torch.Tensor, emotion: torch.Tensor) -> dict:
    """Agreement and usage over ``S`` states: ``greedy`` long ``[S, E]`` (each emotion's argmax action), ``emotion``
    long ``[S]`` (the emotion acted on).

    Returns ``states``; ``pairwise_agreement`` (per state the share of the ``E (E - 1) / 2`` emotion pairs whose
    actions agree, averaged over states; NaN with one emotion); ``agreement_matrix`` ``E x E`` (the share of states
    where emotions ``i`` and ``j`` agree; 1 on the diagonal); ``max_pair_agreement`` (its largest off-diagonal
    entry); ``all_agree`` (the share of states where every head proposes the same action); ``usage`` ``[E]`` (the
    share of states in which each emotion acted).
    """
    states, n_emotions = greedy.shape
    if states == 0:
        raise ValueError("head_agreement: no states recorded")
    same = greedy.unsqueeze(-1) == greedy.unsqueeze(-2)  # [S, E, E]
    matrix = same.to(torch.float64).mean(0)
    upper = torch.triu_indices(n_emotions, n_emotions, offset=1)
    pairs = same[:, upper[0], upper[1]].to(torch.float64)  # [S, pairs]
    usage = torch.bincount(emotion, minlength=n_emotions).to(torch.float64) / states
    return {
        "states": states,
        "pairwise_agreement": float(pairs.mean(-1).mean()) if pairs.shape[-1] else math.nan,
        "max_pair_agreement": float(matrix[upper[0], upper[1]].max()) if pairs.shape[-1] else math.nan,
        "all_agree": float(same.all(-1).all(-1).to(torch.float64).mean()),
        "agreement_matrix": matrix.tolist(),
        "usage": usage.tolist(),
    }


@dataclass
class BranchPoint:
    """A state of the search's play kept for the disagreement check: env ``env`` of the batch at ``step`` of its
    episode, a copy of its gymnasium env at that state, its real history up to it (``[T]``, the last entry holding
    the state, the search's action and emotion), each emotion's greedy action ``[E]`` and the search's root policy
    target ``[E]``."""

    env: int
    step: int
    env_copy: gymnasium.Env
    history: History
    greedy: torch.Tensor
    policy_target: torch.Tensor

    def candidates(self) -> list[tuple[int, int]]:
        """``(action, emotion)`` to try: the search's first, then each other action some head proposes (ascending),
        with the proposing emotion the search's policy target ranks highest (ties: the lowest index)."""
        last = int(self.history.lengths()) - 1
        chosen = (int(self.history.action[last]), int(self.history.emotion[last]))
        out = [chosen]
        for action in sorted(set(self.greedy.tolist()) - {chosen[0]}):
            target = torch.where(self.greedy == action, self.policy_target.double(), -math.inf)
            out.append((action, int(target.argmax())))
        return out


def reservoir_slot(n: int, k: int, generator: torch.Generator | None = None) -> int | None:
    """Where the ``n``-th item (from 1) of a stream goes in a uniform sample of ``k`` (reservoir sampling, Algorithm
    R): slot ``n - 1`` while fewer than ``k`` are kept, else a random slot with probability ``k / n`` (it replaces
    that one), else None. Every item of the stream ends up kept with probability ``k / n_total``."""
    if n <= k:
        return n - 1
    draw = int(torch.randint(n, (), generator=generator))
    return draw if draw < k else None


class HeadRecorder:
    """A greedy :class:`EmotionPolicy` over a :class:`RecordingPlanner`, as ``env.rollout``'s policy, recording at
    every state of each env's first episode each emotion's greedy action and the emotion acted on, and keeping up to
    ``per_episode`` branch points per env (a uniform sample of its states where the heads disagree, drawn on
    ``generator``). ``env``: the TorchRL env played (:func:`gym_envs` of it are copied at the kept states); None
    keeps none."""

    def __init__(
        self,
        policy: EmotionPolicy,
        env: EnvBase | None = None,
        per_episode: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(policy.planner, RecordingPlanner):
            raise TypeError("HeadRecorder needs a policy whose planner is a RecordingPlanner")
        self.policy, self.env, self.per_episode, self.generator = policy, env, int(per_episode), generator
        self.envs: list[gymnasium.Env] | None = None  # read at the first kept state: the env has started by then
        self.greedy: list[torch.Tensor] = []
        self.emotion: list[torch.Tensor] = []
        self.points: dict[int, list[BranchPoint]] = {}
        self.seen: dict[int, int] = {}  # disagreeing states met so far, per env
        self.steps: torch.Tensor | None = None

    @property
    def action_spec(self):  # noqa: ANN201 - the wrapped policy's (``play`` sets it)
        return self.policy.action_spec

    @action_spec.setter
    def action_spec(self, value) -> None:  # noqa: ANN001
        self.policy.action_spec = value

    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = self.policy(tensordict)
        root = self.policy.planner.last
        n_envs = out.batch_size[0]
        if self.steps is None:
            self.steps = torch.zeros(n_envs, dtype=torch.long)
        live = ~tensordict.get("done").reshape(n_envs).cpu()  # finished envs wait with done set (break_when_all_done)
        greedy = root.get("action_logits").float().argmax(-1).cpu()  # [n, E]
        emotion = out.get("emotion").reshape(n_envs).cpu()
        self.greedy.append(greedy[live])
        self.emotion.append(emotion[live])
        disagree = live & (greedy != greedy[:, :1]).any(-1)
        if self.per_episode > 0 and self.env is not None and bool(disagree.any()):
            self.envs = gym_envs(self.env) if self.envs is None else self.envs
            self._keep(disagree.nonzero().flatten().tolist(), greedy, root.get("policy_target").float().cpu())
        self.steps += live.long()
        return out

    def _keep(self, rows: list[int], greedy: torch.Tensor, policy_target: torch.Tensor) -> None:
        """Offer the current state of each env of ``rows`` (its heads disagree) to that env's reservoir."""
        histories = None
        for b in rows:
            self.seen[b] = self.seen.get(b, 0) + 1
            kept = self.points.setdefault(b, [])
            slot = reservoir_slot(self.seen[b], self.per_episode, self.generator)
            if slot is None:
                continue
            histories = self.policy.histories() if histories is None else histories
            point = BranchPoint(
                env=b,
                step=int(self.steps[b]),
                env_copy=copy.deepcopy(self.envs[b]),
                history=histories[b].to("cpu"),
                greedy=greedy[b].clone(),
                policy_target=policy_target[b].clone(),
            )
            if slot == len(kept):
                kept.append(point)
            else:
                kept[slot] = point

    def states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The recorded ``greedy`` ``[S, E]`` and ``emotion`` ``[S]`` of every first-episode state."""
        return torch.cat(self.greedy), torch.cat(self.emotion)

    def branch_points(self) -> list[BranchPoint]:
        """The kept states, by env then step."""
        return sorted((p for kept in self.points.values() for p in kept), key=lambda p: (p.env, p.step))


def stack_histories(histories: list[History]) -> History:
    """One-row histories ``[T_i]`` (``mask`` a valid prefix, or None: all valid) right-padded into one
    ``[n, max T_i]`` with its ``mask``."""
    length = max(h.batch_size[0] for h in histories)
    first = histories[0]
    out = History.empty(len(histories), length, first.observation.shape[1:], first.observation.dtype, "cpu")
    out.mask = torch.zeros(len(histories), length, dtype=torch.bool)
    for i, h in enumerate(histories):
        t = int(h.lengths())
        out.mask[i, :t] = True
        for name in ("observation", "action", "emotion", "reward"):
            getattr(out, name)[i, :t] = getattr(h, name)[:t]
    return out


@torch.no_grad()
def rollout_branches(
    model,  # noqa: ANN001 - an EmotionModel
    planner,  # noqa: ANN001
    starts: list[tuple[gymnasium.Env, History, int]],
    horizon: int,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Undiscounted returns of ``(env, history, action)`` branches, played together: each on its own copy of
    ``env``, first ``action`` (already written at its history's last entry), then the greedy policy of ``planner``
    continuing ``history``, for ``horizon`` steps in all or until the episode ends (terminated or truncated by the
    copy's time limit). The given envs and histories are left as they are."""
    n = len(starts)
    envs = [copy.deepcopy(env) for env, _, _ in starts]
    returns = np.zeros(n)
    reward = torch.zeros(n)
    observation: list[np.ndarray | None] = [None] * n
    alive = np.ones(n, dtype=bool)
    actions = [action for _, _, action in starts]
    policy = EmotionPolicy(model, planner, greedy=True, generator=generator)
    policy.set_histories(stack_histories([history for _, history, _ in starts]))
    rows = np.arange(n)  # the branches the policy's histories hold, in its order
    for step in range(horizon):
        for i, action in zip(rows, actions, strict=True):
            obs, r, terminated, truncated, _ = envs[i].step(int(action))
            observation[i], reward[i] = obs, float(r)
            returns[i] += float(r)
            alive[i] = not (terminated or truncated)
        if step == horizon - 1 or not alive.any():
            break
        if not alive[rows].all():
            policy.set_histories(policy.histories()[torch.as_tensor(alive[rows])])
            rows = rows[alive[rows]]
        td = TensorDict(
            observation=torch.as_tensor(np.stack([observation[i] for i in rows])),
            is_init=torch.zeros(len(rows), 1, dtype=torch.bool),
            prev_reward=reward[rows].unsqueeze(-1),
            batch_size=[len(rows)],
        )
        actions = policy(td).get("action").tolist()
    return returns.tolist()


def check_disagreements(
    model,  # noqa: ANN001 - an EmotionModel
    planner,  # noqa: ANN001
    points: list[BranchPoint],
    horizon: int,
    generator: torch.Generator | None = None,
) -> dict:
    """Play every candidate action of every branch point (:meth:`BranchPoint.candidates`) with
    :func:`rollout_branches` and compare the search's return with the best alternative's.

    Returns ``states``; ``search_at_least_as_good`` and ``search_better`` (the shares of states where the search's
    action's return is ``>=``, ``>`` the best alternative's); ``mean_return_difference`` (search minus best
    alternative, averaged; NaN without states); and per state ``points``: env, step, actions, emotions, returns.
    """
    starts, owners = [], []
    for k, point in enumerate(points):
        last = int(point.history.lengths()) - 1
        for action, emotion in point.candidates():
            history = point.history.clone()
            history.action[last], history.emotion[last] = action, emotion
            starts.append((point.env_copy, history, action))
            owners.append(k)
    returns = rollout_branches(model, planner, starts, horizon, generator) if starts else []
    per_point = [[r for r, owner in zip(returns, owners, strict=True) if owner == k] for k in range(len(points))]
    difference = [r[0] - max(r[1:]) for r in per_point]
    share = (lambda values: float(np.mean(values))) if points else (lambda values: math.nan)
    return {
        "states": len(points),
        "horizon": horizon,
        "search_at_least_as_good": share([d >= 0 for d in difference]),
        "search_better": share([d > 0 for d in difference]),
        "mean_return_difference": share(difference),
        "points": [
            {
                "env": p.env,
                "step": p.step,
                "actions": [a for a, _ in p.candidates()],
                "emotions": [e for _, e in p.candidates()],
                "returns": r,
            }
            for p, r in zip(points, per_point, strict=True)
        ],
    }


def heads_table(heads: dict, check: dict | None) -> str:
    """The printed part of :func:`head_agreement`'s and :func:`check_disagreements`' reports: the agreement, the
    ``E x E`` matrix, and the check's result (when it ran)."""
    matrix = heads["agreement_matrix"]
    lines = [
        f"heads over the search's {heads['states']} states: pairwise agreement {heads['pairwise_agreement']:.3f} "
        f"(most agreeing pair {heads['max_pair_agreement']:.3f}), all heads agree in {heads['all_agree']:.3f}",
        "pairwise agreement (row, column: emotion):",
        "     " + "".join(f"{j:>6}" for j in range(len(matrix))),
        *(f"{i:>5}" + "".join(f"{value:6.2f}" for value in row) for i, row in enumerate(matrix)),
    ]
    if check is not None:
        lines.append(
            f"where the heads disagree ({check['states']} states, rollouts of {check['horizon']} steps): the search's "
            f"action did at least as well as the best other head's in {check['search_at_least_as_good']:.3f}, better "
            f"in {check['search_better']:.3f}; mean return difference {check['mean_return_difference']:+.2f}"
        )
    return "\n".join(lines)
