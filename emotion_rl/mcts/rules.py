"""The root rules (spec 1.2-1.3 and Gumbel MuZero): how a search starts, which emotion each simulation takes at the
root, and what the search returns.

Below the root every node selects by pUCT over a Q transform (``loop.select_child``). The root is where searches
differ, so a root rule is an object with three steps, as mctx passes its policies as functions:

- ``start(tree, num_simulations, draw) -> state``: the search's draws (the Gumbel variables), a tuple of arrays;
  ``draw()`` gives the search's numpy generator, and is None when the search does not explore.
- ``select(tree, selection, env, root, simulation, state) -> emotion``: the root emotion of simulation
  ``simulation`` of environment ``env``, a function written with ``loop.kernel`` (compiled by numba), which the
  compiled loop calls without knowing the rule.
- ``finish(tree, selection, state) -> RootDecision``: the search's policy target and, if the rule decides it,
  the emotion to act with.

:class:`PUCTRoot` is the specification's root (pUCT); :class:`GumbelRoot` is Gumbel
MuZero's (Danihelka et al. 2022). A new root rule is one subclass of :class:`RootRule`; a config names it by
``class_path`` (docs/search.md, "Root rules").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import numpy as np

from emotion_rl.config import Configurable
from emotion_rl.mcts.loop import Selection, kernel, select_child
from emotion_rl.mcts.tree import Tree, TreeArrays

__all__ = [
    "GumbelRoot",
    "GumbelState",
    "PUCTRoot",
    "RootDecision",
    "RootRule",
    "completed_q",
    "halving_schedule",
]


class RootDecision(NamedTuple):
    """What a search returns at its roots: ``policy`` ``[B, E]``, the policy target (what phase 4 learns from,
    spec 2.2.1), and ``emotion`` ``[B]``, the emotion to act with, or None when the acting policy draws it from
    ``policy`` with its temperature (spec 3.4)."""

    policy: np.ndarray
    emotion: np.ndarray | None


class RootRule(Configurable):
    """A search's root: :meth:`start`, :attr:`select`, :meth:`finish` (the module docstring). Subclass it."""

    select: ClassVar[Callable]
    """``(tree, selection, env, root, simulation, state) -> emotion``, written with ``loop.kernel``."""

    def start(self, tree: Tree, num_simulations: int, draw: Callable[[], np.random.Generator] | None) -> tuple:
        """The search's state at its roots, a tuple of arrays handed to :attr:`select` (may also change the roots'
        priors). ``draw`` is None when the search does not explore."""
        return ()

    def finish(self, tree: Tree, selection: Selection, state: tuple) -> RootDecision:
        """The policy target and the emotion to act with (or None), after the simulations; ``selection`` is the
        planner's Q transform (:class:`~emotion_rl.mcts.loop.Selection`)."""
        raise NotImplementedError


def visit_distribution(tree: Tree) -> np.ndarray:
    """The roots' normalised visit counts ``[B, E]`` in the tree's float type (spec 1.3 ``NORMALIZE``)."""
    counts = tree.visits_plus_one[tree.roots] - 1
    return counts / counts.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------- pUCT (spec 1.2)
@kernel
def puct_root(tree: TreeArrays, selection: Selection, env: int, root: int, simulation: int, state: tuple) -> int:
    """pUCT at the root, as at every other node (spec 1.2)."""
    return select_child(tree, selection, root, env)


class PUCTRoot(RootRule):
    """The specification's root (spec 1.2, 1.3): pUCT, the normalised visit counts as the policy target, the acting
    emotion drawn by the policy from them (spec 3.4). No root noise: the specification has none, and exploration
    over emotions is the temperature's (spec 3.4)."""

    select = staticmethod(puct_root)

    def finish(self, tree: Tree, selection: Selection, state: tuple) -> RootDecision:
        return RootDecision(visit_distribution(tree), None)


# ---------------------------------------------------------------------------------------------- Gumbel MuZero
def halving_schedule(considered: int, num_simulations: int) -> np.ndarray:
    """Sequential halving's visit targets ``[num_simulations]``: simulation ``k`` visits a considered root child
    whose count is ``schedule[k]``. Each phase spends about ``num_simulations / log2(considered)`` simulations
    evenly on the children still considered, then keeps the better half (at least two)."""
    if considered <= 1:
        return np.arange(num_simulations)
    phases = math.ceil(math.log2(considered))
    targets: list[int] = []
    visits, alive = 0, considered
    while len(targets) < num_simulations:
        rounds = max(1, num_simulations // (phases * alive))
        for _ in range(rounds):
            targets += [visits] * alive
            visits += 1
        alive = max(2, alive // 2)
    return np.array(targets[:num_simulations], dtype=np.int64)


class GumbelState(NamedTuple):
    """:class:`GumbelRoot`'s state, what its :attr:`~GumbelRoot.select` reads: the Gumbel variables ``gumbel`` and
    the prior's ``logits`` ``[B, E]`` in the tree's float type, the ``considered`` emotions (bool ``[B, E]``), the
    halving ``schedule`` ``[num_simulations]`` (:func:`halving_schedule`), ``c_visit`` and ``c_scale`` of ``sigma``
    and ``tiny``, the smallest normal number of the tree's float type (the floor of ``sigma``'s spread)."""

    gumbel: np.ndarray
    logits: np.ndarray
    considered: np.ndarray
    schedule: np.ndarray
    c_visit: float
    c_scale: float
    tiny: np.floating


@kernel
def root_q(tree: TreeArrays, selection: Selection, root: int, e: int):
    """The completed ``Q`` of the root's child ``e``: ``Q`` where visited, else the child's stored ``V^e``."""
    if tree.visits_plus_one[root, e] > selection.one:
        return tree.q[root, e]
    return tree.child_value[root, e]


@kernel
def fill_completed_q(tree: TreeArrays, selection: Selection, roots: np.ndarray, out: np.ndarray) -> None:
    """``out[b, e]``: :func:`root_q` of the child ``e`` of root ``roots[b]``."""
    for b in range(roots.shape[0]):
        for e in range(out.shape[1]):
            out[b, e] = root_q(tree, selection, roots[b], e)


def completed_q(tree: Tree, selection: Selection) -> np.ndarray:
    """The root children's completed ``Q`` ``[B, E]`` in the tree's float type, as the root rule reads it
    (:func:`root_q`: ``Q`` where visited, else the child's ``V^e``): what the search returns as
    ``completed_q``, and what the root's decision margin is measured on (``root_gap.root_q_gaps``)."""
    out = np.empty((tree.batch, tree.q.shape[1]), dtype=tree.q.dtype)
    fill_completed_q(tree.arrays, selection, tree.roots, out)
    return out


@kernel
def gumbel_sigma(tree: TreeArrays, selection: Selection, root: int, state: GumbelState, sigma: np.ndarray) -> None:
    """``sigma(q) = (c_visit + max_b N(b)) * c_scale * q`` into ``sigma`` ``[E]`` (float64), with ``q`` the root's
    completed ``Q`` rescaled to ``[0, 1]`` by its own min and max in the tree's float type, the spread floored at
    ``max(selection.min_spread, tiny)``. NaN propagates as numpy's min and max propagate it."""
    c_visit, c_scale, tiny = state.c_visit, state.c_scale, state.tiny
    n_emotions = tree.q.shape[1]
    low = high = root_q(tree, selection, root, 0)
    max_visits = np.int64(tree.visits_plus_one[root, 0] - selection.one)
    for e in range(1, n_emotions):
        q = root_q(tree, selection, root, e)
        if not np.isnan(low) and (np.isnan(q) or q < low):
            low = q
        if not np.isnan(high) and (np.isnan(q) or q > high):
            high = q
        visits = np.int64(tree.visits_plus_one[root, e] - selection.one)
        if visits > max_visits:
            max_visits = visits
    floor = selection.min_spread if selection.min_spread > tiny else tiny
    spread = high - low
    if not np.isnan(spread) and not spread > floor:
        spread = floor
    scale = (c_visit + np.float64(max_visits)) * c_scale
    for e in range(n_emotions):
        sigma[e] = scale * np.float64((root_q(tree, selection, root, e) - low) / spread)


@kernel
def gumbel_best(tree: TreeArrays, selection: Selection, env: int, root: int, target: int, state: GumbelState) -> int:
    """Among the considered root children visited ``target`` times, the first maximum of ``g + logits + sigma(q)``
    (``g + logits`` in the tree's float type, the score in float64); others score ``-inf``."""
    gumbel, logits, considered = state.gumbel[env], state.logits[env], state.considered[env]
    n_emotions = tree.q.shape[1]
    sigma = np.empty(n_emotions, dtype=np.float64)
    gumbel_sigma(tree, selection, root, state, sigma)
    best, best_score = 0, -np.inf
    for e in range(n_emotions):
        score = -np.inf
        if considered[e] and np.int64(tree.visits_plus_one[root, e] - selection.one) == target:
            score = np.float64(gumbel[e] + logits[e]) + sigma[e]
        if np.isnan(score):
            return e
        if e == 0 or score > best_score:
            best, best_score = e, score
    return best


@kernel
def gumbel_root(
    tree: TreeArrays, selection: Selection, env: int, root: int, simulation: int, state: GumbelState
) -> int:
    """Sequential halving: simulation ``k`` visits the best considered child whose count is ``schedule[k]``."""
    return gumbel_best(tree, selection, env, root, state.schedule[simulation], state)


class GumbelRoot(RootRule):
    """The Gumbel MuZero root (Danihelka et al. 2022): sample ``considered`` emotions without replacement by
    Gumbel-top-k on the prior's logits, share the simulations among them by sequential halving, act with the best
    of the most visited, and return ``softmax(logits + sigma(completed Q))`` as the policy target. Not exploring,
    the Gumbel variables are 0 (a deterministic search over the top-``considered`` logits).

    Args:
        considered: ``m``, emotions sampled at the root.
        c_visit, c_scale: ``sigma(q) = (c_visit + max_b N(b)) * c_scale * q``.

    The root chooses the emotion to act with, the halving winner (``selected_emotion``; the temperature schedule
    then does nothing, decision 25). Unvisited children read their own ``V^e``; the floor of the rescaling is the
    planner's (``min_spread`` of :class:`~emotion_rl.mcts.search.EmotionMCTS`).
    """

    select = staticmethod(gumbel_root)

    def __init__(self, considered: int = 8, c_visit: float = 50.0, c_scale: float = 0.1) -> None:
        if considered < 1 or c_visit < 0 or c_scale < 0:
            raise ValueError(f"GumbelRoot: need considered >= 1, c_visit >= 0, c_scale >= 0: {considered}, "
                             f"{c_visit}, {c_scale}")  # fmt: skip
        self.considered, self.c_visit, self.c_scale = int(considered), float(c_visit), float(c_scale)

    def start(self, tree: Tree, num_simulations: int, draw: Callable[[], np.random.Generator] | None) -> GumbelState:
        """The Gumbel variables (0 when ``draw`` is None), the considered emotions and the halving schedule."""
        prior = tree.prior[tree.roots]
        with np.errstate(divide="ignore"):
            logits = np.log(prior)
        gumbel = np.zeros_like(prior) if draw is None else draw().gumbel(size=prior.shape).astype(prior.dtype)
        m = min(self.considered, prior.shape[-1])
        top = np.argsort(-(gumbel + logits), axis=-1, kind="stable")[:, :m]
        considered = np.zeros(prior.shape, dtype=np.bool_)
        np.put_along_axis(considered, top, True, axis=-1)
        tiny = np.finfo(prior.dtype).tiny  # a scalar of the tree's float type
        schedule = halving_schedule(m, num_simulations)
        return GumbelState(gumbel, logits, considered, schedule, self.c_visit, self.c_scale, tiny)

    def finish(self, tree: Tree, selection: Selection, state: GumbelState) -> RootDecision:
        """The halving winner (the best of the most visited considered children) and ``softmax(logits + sigma)``."""
        logits, considered = state.logits, state.considered
        visits = np.where(considered, tree.visits[tree.roots], -1)
        arrays, n_emotions = tree.arrays, logits.shape[-1]
        emotion = np.empty(tree.batch, dtype=np.int64)
        policy = np.empty((tree.batch, n_emotions), dtype=np.float64)
        sigma = np.empty(n_emotions, dtype=np.float64)
        for env, root in enumerate(tree.roots):
            emotion[env] = gumbel_best(arrays, selection, env, root, visits[env].max(), state)
            gumbel_sigma(arrays, selection, root, state, sigma)
            z = logits[env] + sigma
            z = np.exp(z - z.max())
            policy[env] = z / z.sum()
        return RootDecision(policy, emotion)
