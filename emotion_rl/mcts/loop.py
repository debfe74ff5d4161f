"""The simulation loop (spec 1.3 step 3, 1.4): selection, expansion and backup, batched over environments.

Each environment runs its own simulations in the spec's order; environments need not be in step, because they
never interact. Round after round, every environment that is neither finished nor waiting runs one simulation:
a path from its root (the root rule's emotion at the root, :func:`select_child` below it) down to an unexpanded
child or ``max_depth``. If the leaf needs no model call its value is backed up at once (:func:`backup`); a root
child's expansion needs none either, because the root's children are evaluated in one call before the
simulations (``root_children``). Otherwise the environment waits, and once ``wait_fraction`` of the searching
environments wait, :func:`run_rounds` returns: the caller (:func:`run_simulations`) makes one batched model call,
and the next :func:`run_rounds` expands the waiting leaves (:func:`add_child`) and backs their values up.

The loop is compiled with numba when it is installed (:func:`kernel`); without numba, or with a root rule whose
``select`` is a plain Python function, the same code runs as Python (slowly). The trees are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from emotion_rl.mcts.tree import NodeOutputs, SearchModel, Tree, TreeArrays

try:
    import numba
except ImportError:  # the loop runs as Python
    numba = None

__all__ = ["WAIT_FRACTION", "LoopState", "Selection", "is_compiled", "kernel", "run_simulations", "select_child"]

WAIT_FRACTION = 0.85
"""The model is called once this fraction of the environments still searching wait for an expansion."""


def kernel(function: Callable | None = None, *, cache: bool = True) -> Callable:
    """Compile ``function`` with numba (nopython, numpy's float semantics, cached on disk when it comes from a file)
    when numba is installed; else return it unchanged. A root rule's ``select`` is written with it (``@kernel``)."""
    if function is None:
        return lambda f: kernel(f, cache=cache)
    if numba is None:
        return function
    cache = cache and os.path.isfile(function.__code__.co_filename)  # code run by exec has no file to cache beside
    return numba.njit(cache=cache, error_model="numpy")(function)


def is_compiled(function: Callable) -> bool:
    """True when ``function`` is a numba-compiled function (made by :func:`kernel` with numba installed)."""
    return numba is not None and isinstance(function, numba.core.registry.CPUDispatcher)


class Selection(NamedTuple):
    """What :func:`select_child` reads besides the tree: the Q transform (docs/search.md) in the tree's float type.

    ``completed``: an unvisited child reads its own stored ``V^e`` instead of 0 (decision 2); ``minmax``: ``Q``
    normalised to ``[0, 1]`` by the tree's bounds; ``min_spread``: the smallest spread the normalisation divides by
    (0: the bounds' own); ``one``: 1 in the tree's float type (every scalar of the loop stays in that type).
    """

    completed: bool
    minmax: bool
    min_spread: np.floating
    one: np.floating


class LoopState(NamedTuple):
    """Each environment's progress between two model calls ``[B]``: simulations left, whether it waits for an
    expansion, the waiting path (``path_nodes``/``path_emotions`` ``[B, max_depth]``, its length ``path_depth``) and
    the expansion's input buffer ``observation`` ``[B, obs]`` (rows not waiting keep their last state)."""

    remaining: np.ndarray
    waiting: np.ndarray
    path_nodes: np.ndarray
    path_emotions: np.ndarray
    path_depth: np.ndarray
    observation: np.ndarray

    @classmethod
    def start(cls, tree: Tree, num_simulations: int, max_depth: int) -> LoopState:
        batch = tree.batch
        return cls(
            remaining=np.full(batch, num_simulations, dtype=np.int64),
            waiting=np.zeros(batch, dtype=np.bool_),
            path_nodes=np.zeros((batch, max_depth), dtype=np.int64),
            path_emotions=np.zeros((batch, max_depth), dtype=np.int64),
            path_depth=np.zeros(batch, dtype=np.int64),
            observation=np.zeros((batch, tree.child_state.shape[-1]), dtype=tree.child_state.dtype),
        )


class LoopSettings(NamedTuple):
    max_nodes: int
    max_depth: int
    num_simulations: int
    wait_fraction: float
    prefetched: bool


# ---------------------------------------------------------------------------------------------- one node, one path
@kernel
def select_child(tree: TreeArrays, selection: Selection, node: int, env: int) -> int:
    """spec 1.2 ``SELECT_CHILD``: ``argmax_e Q'(n, e) + c_puct P(n, e) sqrt(max(N(n), 1)) / (1 + N(n, e))``
    (decisions 1-3), ``Q'`` the :class:`Selection`'s transform of ``Q``. Scalar by scalar in the tree's float type;
    the first maximum wins (decision 3), or the first NaN if any (numpy's argmax)."""
    one = selection.one
    zero = one - one
    low, high = tree.q_low[env], tree.q_high[env]
    spread = high - low
    known = spread > zero
    if known and spread < selection.min_spread:
        spread = selection.min_spread
    best, best_score = 0, zero
    for e in range(tree.q.shape[1]):
        visits_plus_one = tree.visits_plus_one[node, e]
        visited = visits_plus_one > one
        if selection.completed and not visited:
            q = tree.child_value[node, e]
        else:
            q = tree.q[node, e]
        if selection.minmax:
            if known and (selection.completed or visited):
                q = (q - low) / spread
                if q < zero:
                    q = zero
                elif q > one:
                    q = one
            else:
                q = zero
        score = q + tree.explore[node, e] / visits_plus_one
        if np.isnan(score):
            return e
        if e == 0 or score > best_score:
            best, best_score = e, score
    return best


@kernel
def backup(tree: TreeArrays, env: int, nodes: np.ndarray, emotions: np.ndarray, depth: int, leaf_value, one) -> None:
    """spec 1.4 backpropagation of ``leaf_value`` along the first ``depth`` edges of one path: ``N += 1``,
    ``W += leaf_value``, ``Q = W / N``, then ``N(n)`` and the exploration terms; the environment's bounds of ``Q``
    follow (numpy's ``minimum``/``maximum``: NaN propagates)."""
    low, high = tree.q_low[env], tree.q_high[env]
    for d in range(depth):
        node, e = nodes[d], emotions[d]
        visits_plus_one = tree.visits_plus_one[node, e] + one
        value_sum = tree.value_sum[node, e] + leaf_value
        tree.visits_plus_one[node, e] = visits_plus_one
        tree.value_sum[node, e] = value_sum
        q = value_sum / (visits_plus_one - one)
        tree.q[node, e] = q
        if not np.isnan(low) and (np.isnan(q) or q < low):
            low = q
        if not np.isnan(high) and (np.isnan(q) or q > high):
            high = q
        visits = tree.node_visits[node] + one
        tree.node_visits[node] = visits
        root = np.sqrt(visits)
        for k in range(tree.q.shape[1]):
            tree.explore[node, k] = tree.c_prior[node, k] * root
    tree.q_low[env], tree.q_high[env] = low, high


@kernel
def add_child(
    tree: TreeArrays, env: int, max_nodes: int, parent: int, emotion: int, depth: int,
    policy: np.ndarray, c_prior: np.ndarray, values: np.ndarray, dynamics: np.ndarray, leaf_value,
) -> None:  # fmt: skip
    """spec 1.4 expansion: the child ``(parent, emotion)`` of environment ``env`` becomes its next node, with the
    model's outputs at it (``policy``, ``c_prior``, ``values`` ``[E]``, ``dynamics`` ``[E, obs]``); with
    ``N(n) = 0`` its first exploration terms are ``c_puct * P`` (decision 1)."""
    node = env * max_nodes + tree.num_nodes[env]
    tree.children[parent, emotion] = node
    tree.prior[node] = policy
    tree.c_prior[node] = c_prior
    tree.explore[node] = c_prior
    tree.child_value[node] = values
    tree.child_state[node] = dynamics
    tree.node_value[node] = leaf_value
    tree.node_depth[node] = depth
    tree.num_nodes[env] += 1


# ---------------------------------------------------------------------------------------------- one simulation
@kernel
def selection_path(tree: TreeArrays, selection: Selection, state: LoopState, settings: LoopSettings, env: int,
                   root_emotion: int) -> int:  # fmt: skip
    """spec 1.4 selection: the path of environment ``env`` from its root, through ``root_emotion`` (the root rule's)
    then :func:`select_child`, down to an unexpanded child or ``max_depth``, into ``state.path_nodes`` and
    ``state.path_emotions``; returns its length."""
    sink = tree.node_depth.shape[0] - 1
    node, depth, emotion = env * settings.max_nodes, 0, root_emotion
    while depth < settings.max_depth:
        if depth > 0:
            emotion = select_child(tree, selection, node, env)
        state.path_nodes[env, depth], state.path_emotions[env, depth] = node, emotion
        depth += 1
        node = tree.children[node, emotion]
        if node == sink:
            break
    return depth


@kernel
def expand_root_child(tree: TreeArrays, settings: LoopSettings, root_children: NodeOutputs, env: int, parent: int,
                      emotion: int) -> None:  # fmt: skip
    """spec 1.4 expansion of a root child from its outputs computed before the simulations (``root_children``)."""
    add_child(
        tree, env, settings.max_nodes, parent, emotion, 1,
        root_children.policy[env, emotion], root_children.c_prior[env, emotion],
        root_children.values[env, emotion], root_children.dynamics[env, emotion],
        root_children.leaf_value[env, emotion],
    )  # fmt: skip


@kernel
def simulate(tree: TreeArrays, selection: Selection, state: LoopState, settings: LoopSettings,
             root_children: NodeOutputs, env: int, root_emotion: int) -> None:  # fmt: skip
    """One simulation of environment ``env`` (spec 1.4) from ``root_emotion``: the selection, then the leaf's
    backup when it needs no model call (an expanded or ``max_depth`` leaf, or a prefetched root child, expanded
    here), else the environment waits for the expansion (``state.waiting``, ``state.path_depth``)."""
    one = selection.one
    depth = selection_path(tree, selection, state, settings, env, root_emotion)
    parent, emotion = state.path_nodes[env, depth - 1], state.path_emotions[env, depth - 1]
    expanding = tree.visits_plus_one[parent, emotion] > one and depth < settings.max_depth
    leaf_value = tree.child_value[parent, emotion]
    if expanding and settings.prefetched and depth == 1:  # a root child: its outputs are known
        expand_root_child(tree, settings, root_children, env, parent, emotion)
        leaf_value = root_children.leaf_value[env, emotion]
        expanding = False
    if expanding:
        state.waiting[env] = True
        state.path_depth[env] = depth
    else:
        backup(tree, env, state.path_nodes[env], state.path_emotions[env], depth, leaf_value, one)
        state.remaining[env] -= 1


# ---------------------------------------------------------------------------------------------- the rounds
@kernel
def expansion(tree: TreeArrays, selection: Selection, state: LoopState, settings: LoopSettings,
              new: NodeOutputs) -> None:  # fmt: skip
    """spec 1.4 expansion and backup of every waiting environment's leaf with the model's outputs ``new`` (row
    ``b`` for environment ``b``); each finishes its simulation."""
    for b in range(tree.num_nodes.shape[0]):
        if state.waiting[b]:
            depth = state.path_depth[b]
            parent, emotion = state.path_nodes[b, depth - 1], state.path_emotions[b, depth - 1]
            add_child(
                tree, b, settings.max_nodes, parent, emotion, depth,
                new.policy[b], new.c_prior[b], new.values[b], new.dynamics[b], new.leaf_value[b],
            )  # fmt: skip
            backup(tree, b, state.path_nodes[b], state.path_emotions[b], depth, new.leaf_value[b], selection.one)
            state.remaining[b] -= 1
            state.waiting[b] = False


@kernel
def model_call_due(tree: TreeArrays, state: LoopState, settings: LoopSettings) -> bool:
    """True once ``wait_fraction`` of the environments still searching wait, with the waiting leaves' states
    written into ``state.observation`` (the other rows keep their last state)."""
    n_waiting, n_searching = 0, 0
    for b in range(state.waiting.shape[0]):
        n_waiting += state.waiting[b]
        n_searching += state.remaining[b] > 0
    if not (n_waiting > 0 and n_waiting >= settings.wait_fraction * n_searching):
        return False
    for b in range(state.waiting.shape[0]):
        if state.waiting[b]:
            depth = state.path_depth[b]
            state.observation[b] = tree.child_state[state.path_nodes[b, depth - 1], state.path_emotions[b, depth - 1]]
    return True


@kernel(cache=False)  # numba keys a cached version by the identity of root_select: it would never be found again
def run_rounds(
    tree: TreeArrays,
    selection: Selection,
    state: LoopState,
    settings: LoopSettings,
    root_children: NodeOutputs,
    new: NodeOutputs,
    apply: bool,
    root_select: Callable,
    root_state: tuple,
) -> bool:
    """Rounds of simulations until the next model call; True when one is due (its input is then in
    ``state.observation``), False when every environment has finished.

    ``apply``: first expand the waiting environments' leaves with the model's outputs ``new`` (:func:`expansion`).
    ``root_children``: the root children's outputs ``[B, E, ...]`` when ``settings.prefetched``.
    ``root_select(tree, selection, env, root, simulation, root_state)``: the root rule's choice of a simulation's
    root emotion, called here only (the helpers stay compiled when it is a plain Python function).
    """
    if apply:
        expansion(tree, selection, state, settings, new)
    while True:
        any_active = False
        for b in range(tree.num_nodes.shape[0]):
            if state.remaining[b] == 0 or state.waiting[b]:
                continue
            any_active = True
            simulation = settings.num_simulations - state.remaining[b]
            emotion = root_select(tree, selection, b, b * settings.max_nodes, simulation, root_state)
            simulate(tree, selection, state, settings, root_children, b, emotion)
        if model_call_due(tree, state, settings):
            return True
        if not any_active:
            return False


def run_simulations(
    tree: Tree,
    model: SearchModel,
    cache: object,
    like: Tensor,
    selection: Selection,
    root_select: Callable,
    root_state: tuple,
    num_simulations: int,
    max_depth: int,
    root_children: NodeOutputs | None = None,
    wait_fraction: float = WAIT_FRACTION,
) -> None:
    """spec 1.3 step 3: ``num_simulations`` simulations per environment, each environment in its own order, the
    model called on the batch of waiting leaves (``model.expand(cache, observation)``, ``observation`` on ``like``'s
    device and float type). Compiled when numba is installed and ``root_select`` is compiled."""
    dtype = tree.prior.dtype
    n_emotions, obs_dim = tree.child_state.shape[1:]
    rounds = run_rounds if numba is None or is_compiled(root_select) else run_rounds.py_func
    settings = LoopSettings(tree.max_nodes, max_depth, num_simulations, float(wait_fraction), root_children is not None)
    state = LoopState.start(tree, num_simulations, max_depth)
    if root_children is None:
        root_children = NodeOutputs.empty(dtype, n_emotions, obs_dim, (0, 0))
    outputs = NodeOutputs.empty(dtype, n_emotions, obs_dim)
    apply = False
    while rounds(tree.arrays, selection, state, settings, root_children, outputs, apply, root_select, root_state):
        observation = torch.from_numpy(state.observation).to(like.device, like.dtype)
        outputs = NodeOutputs.from_model(model.expand(cache, observation), tree.c_puct, dtype)
        apply = True
