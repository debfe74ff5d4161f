"""The simulation loop of :class:`~emotion_rl.mcts.search.EmotionMCTS` compiled with numba.

Environments never interact, and a simulation needs the model only to expand a node below the root's children
(those are prefetched, spec 1.4 with ``prefetch_root``). So :func:`run_rounds` runs the numpy loop's rounds for
every environment without leaving compiled code (selection by spec 1.2, the prefetched expansions, backup by
spec 1.4), and returns exactly where the numpy loop would call ``model.expand``; the caller makes that call and
hands the outputs back. The rounds, their order and the model's batched input are the numpy loop's, and every
score, ``Q`` and exploration term is computed with the same operations in the same order and float type (a
float32 tree is computed in float32, never promoted), so the trees are identical array by array
(tests/test_search_kernel.py). docs/search.md, "The simulation loop", says when this path is taken.

Only the deterministic rules are compiled: pUCT (decision 1), every Q transform of ``search_rules.make_rules``
and the lowest-index tie break (decision 3), below either root: pUCT or the Gumbel root
(:class:`~emotion_rl.mcts.rules.GumbelRoot`, whose draws are made in numpy before the simulations and handed
in). Random ties stay on the numpy path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from emotion_rl.mcts import tree as tree_module
from emotion_rl.mcts.rules import GumbelRoot, Rules, completed_q, literal_q, lowest_index, min_max, puct
from emotion_rl.mcts.tree import NodeOutputs, Tree

__all__ = ["CompiledLoop", "KernelRules", "kernel_root", "kernel_rules"]

Q, EXPLORE, VISITS_PLUS_ONE, VALUE_SUM, C_PRIOR = range(5)
"""The rows of a node's edge block, as ``mcts/tree.py`` packs them. Written out here because numba's cache is keyed
on this file only: a change of the packing must change this file too (checked below), or a cached kernel
would keep reading the old one."""
if (Q, EXPLORE, VISITS_PLUS_ONE, VALUE_SUM, C_PRIOR) != (
    tree_module.Q,
    tree_module.EXPLORE,
    tree_module.VISITS_PLUS_ONE,
    tree_module.VALUE_SUM,
    tree_module.C_PRIOR,
):
    raise RuntimeError("emotion_rl.mcts.tree packs the edges differently from what mcts/loop.py was written for")


@dataclass(frozen=True)
class KernelRules:
    """What the kernel needs to know of a :class:`~emotion_rl.mcts.rules.Rules`: the Q transform's parts."""

    completed: bool  # unvisited children read their completion instead of 0 (``completed_q``)
    by_parent: bool  # the completion is the node's value, not the child's stored value
    minmax: bool  # Q normalised by the tree's bounds (``min_max``)


def kernel_rules(rules: Rules) -> KernelRules | None:
    """The compiled form of ``rules``, or None when the kernel does not compute them (random ties, a rule that
    :func:`~emotion_rl.mcts.rules.make_rules` does not build)."""
    if rules.random or rules.selection is not puct or rules.tie_break is not lowest_index:
        return None
    transform = rules.q_transform
    minmax = isinstance(transform, min_max)
    if minmax:
        transform = transform.inner
    if transform is literal_q:
        return KernelRules(False, False, minmax)
    if isinstance(transform, completed_q) and transform.by in ("child", "parent"):
        return KernelRules(True, transform.by == "parent", minmax)
    return None


def kernel_root(root_rule: GumbelRoot | None) -> bool:
    """Whether the kernel computes ``root_rule``'s choices: the pUCT root (None) or a :class:`GumbelRoot` itself
    (not a subclass, which may choose otherwise) with a completion it knows."""
    return root_rule is None or (type(root_rule) is GumbelRoot and root_rule.completed_value in ("child", "parent"))


# ---------------------------------------------------------------------------------------------- compiled parts
@numba.njit(cache=True, error_model="numpy")
def _select(edges, child_value, node_value, node, completed, by_parent, minmax, low, high, one) -> int:
    """spec 1.2 ``SELECT_CHILD`` at one node: ``search_rules.Rules.select`` for the compiled rules, scalar by
    scalar in the tree's float type. The argmax is numpy's: the first maximum, or the first NaN if any."""
    zero = one - one
    spread = high - low
    known = spread > zero
    best, best_score = 0, zero
    for e in range(edges.shape[2]):
        visits_plus_one = edges[node, VISITS_PLUS_ONE, e]
        visited = visits_plus_one > one
        if completed and not visited:
            q = node_value[node] if by_parent else child_value[node, e]
        else:
            q = edges[node, Q, e]
        if minmax:
            if known and (completed or visited):
                q = (q - low) / spread
                if q < zero:
                    q = zero
                elif q > one:
                    q = one
            else:
                q = zero
        score = q + edges[node, EXPLORE, e] / visits_plus_one
        if np.isnan(score):
            return e
        if e == 0 or score > best_score:
            best, best_score = e, score
    return best


@numba.njit(cache=True, error_model="numpy")
def _root_q(edges, child_value, node_value, root, e, by_parent, one):
    """The completed ``Q`` of the root's child ``e`` (``GumbelRoot.sigma``): ``Q`` where visited, else
    ``completion(tree, root, completed_value)``."""
    if edges[root, VISITS_PLUS_ONE, e] > one:
        return edges[root, Q, e]
    return node_value[root] if by_parent else child_value[root, e]


@numba.njit(cache=True, error_model="numpy")
def _gumbel_select(
    edges, child_value, node_value, root, gumbel, logits, considered, target, by_parent, c_visit, c_scale, one, tiny
) -> int:  # fmt: skip
    """``GumbelRoot._best`` at one root: among the considered children (``considered [E]``) visited ``target``
    times, the first maximum of ``g + logits + sigma(q)``, scalar by scalar as numpy computes it.

    Types as numpy's: the completed ``q``, its min-max rescaling (``np.maximum(high - low, tiny)``) and ``g +
    logits`` in the tree's float type; ``sigma = (c_visit + max N) * c_scale * q`` in float64 (numpy promotes:
    ``max N`` is an int64, ``c_visit`` and ``c_scale`` Python floats), so the score is float64 for a float32 tree
    too. Min, max and argmax propagate NaN as numpy's reductions do; ineligible children score ``-inf``."""
    n_emotions = edges.shape[2]
    low = high = _root_q(edges, child_value, node_value, root, 0, by_parent, one)
    max_visits = np.int64(edges[root, VISITS_PLUS_ONE, 0] - one)
    for e in range(1, n_emotions):
        q = _root_q(edges, child_value, node_value, root, e, by_parent, one)
        if not np.isnan(low) and (np.isnan(q) or q < low):
            low = q
        if not np.isnan(high) and (np.isnan(q) or q > high):
            high = q
        visits = np.int64(edges[root, VISITS_PLUS_ONE, e] - one)
        if visits > max_visits:
            max_visits = visits
    spread = high - low
    if not np.isnan(spread) and not spread > tiny:  # np.maximum(spread, tiny), NaN kept
        spread = tiny
    scale = (c_visit + np.float64(max_visits)) * c_scale
    best, best_score = 0, -np.inf
    for e in range(n_emotions):
        score = -np.inf
        if considered[e] and np.int64(edges[root, VISITS_PLUS_ONE, e] - one) == target:
            q = (_root_q(edges, child_value, node_value, root, e, by_parent, one) - low) / spread
            score = np.float64(gumbel[e] + logits[e]) + scale * np.float64(q)
        if np.isnan(score):
            return e
        if e == 0 or score > best_score:
            best, best_score = e, score
    return best


@numba.njit(cache=True, error_model="numpy")
def _backup(edges, node_visits, q_low, q_high, track, env, nodes, emotions, depth, leaf_value, one) -> None:
    """spec 1.4 backpropagation of ``leaf_value`` along the first ``depth`` edges of one path: ``Tree.backup``
    edge by edge (the bounds as numpy's ``minimum``/``maximum``, NaN included)."""
    low, high = q_low[env] if track else one, q_high[env] if track else one
    for d in range(depth):
        node, e = nodes[d], emotions[d]
        visits_plus_one = edges[node, VISITS_PLUS_ONE, e] + one
        value_sum = edges[node, VALUE_SUM, e] + leaf_value
        edges[node, VISITS_PLUS_ONE, e] = visits_plus_one
        edges[node, VALUE_SUM, e] = value_sum
        q = value_sum / (visits_plus_one - one)
        edges[node, Q, e] = q
        if track:
            if not np.isnan(low) and (np.isnan(q) or q < low):
                low = q
            if not np.isnan(high) and (np.isnan(q) or q > high):
                high = q
        visits = node_visits[node] + one
        node_visits[node] = visits
        root = np.sqrt(visits)
        for k in range(edges.shape[2]):
            edges[node, EXPLORE, k] = edges[node, C_PRIOR, k] * root
    if track:
        q_low[env], q_high[env] = low, high


@numba.njit(cache=True, error_model="numpy")
def _add_child(
    edges, prior, child_value, child_state, children, node_value, node_depth, num_nodes, max_nodes, env, parent,
    emotion, depth, policy, c_prior, values, dynamics, leaf_value,
) -> None:  # fmt: skip
    """spec 1.4 expansion: the child ``(parent, emotion)`` of environment ``env`` becomes its next node, with the
    outputs ``policy, c_prior, values [E]``, ``dynamics [E, obs]`` (``Tree.expand``)."""
    node = env * max_nodes + num_nodes[env]
    children[parent, emotion] = node
    prior[node] = policy
    edges[node, C_PRIOR] = c_prior
    edges[node, EXPLORE] = c_prior
    child_value[node] = values
    child_state[node] = dynamics
    node_value[node] = leaf_value
    node_depth[node] = depth
    num_nodes[env] += 1


@numba.njit(cache=True, error_model="numpy")
def run_rounds(
    edges, prior, child_value, child_state, children, node_visits, node_value, node_depth, num_nodes,
    q_low, q_high, track, max_nodes, max_depth, completed, by_parent, minmax, one,
    prefetched, root_policy, root_c_prior, root_values, root_dynamics, root_leaf,
    apply, new_policy, new_c_prior, new_values, new_dynamics, new_leaf,
    remaining, waiting, path_nodes, path_emotions, path_depth, observation, wait_fraction,
    gumbel_root, num_simulations, gumbel, logits, considered, schedule, root_by_parent, c_visit, c_scale, tiny,
) -> bool:  # fmt: skip
    """``EmotionMCTS.run_simulations``'s rounds until the next model call; True when one is due (its input is then
    in ``observation``), False when every environment has finished.

    ``apply``: first expand the waiting environments' pending children with the model's outputs ``new_*`` (row
    ``b`` for environment ``b``) and back their simulations up (spec 1.4). Then, round after round, every
    environment neither finished nor waiting runs one simulation (spec 1.4: selection by spec 1.2; a root child's
    expansion from the prefetched ``root_*`` outputs ``[B, E, ...]``; backup), or starts waiting when its leaf
    needs the model; after each round the model is due once ``wait_fraction`` of the searching environments wait.

    ``gumbel_root``: each simulation's root emotion is the Gumbel root's (``GumbelRoot.select``), from its draws
    ``gumbel``, ``logits``, ``considered`` ``[B, E]`` and ``schedule`` ``[num_simulations]``, with the completion
    ``root_by_parent`` and ``c_visit``, ``c_scale``; ``tiny`` is ``np.finfo`` of the tree's float type.
    """
    batch = num_nodes.shape[0]
    sink = node_depth.shape[0] - 1
    if apply:
        for b in range(batch):
            if waiting[b]:
                depth = path_depth[b]
                parent, emotion = path_nodes[b, depth - 1], path_emotions[b, depth - 1]
                _add_child(
                    edges, prior, child_value, child_state, children, node_value, node_depth, num_nodes, max_nodes,
                    b, parent, emotion, depth, new_policy[b], new_c_prior[b], new_values[b], new_dynamics[b],
                    new_leaf[b],
                )  # fmt: skip
                _backup(
                    edges, node_visits, q_low, q_high, track, b, path_nodes[b], path_emotions[b], depth, new_leaf[b],
                    one,
                )  # fmt: skip
                remaining[b] -= 1
                waiting[b] = False
    while True:
        any_active = False
        for b in range(batch):
            if remaining[b] == 0 or waiting[b]:
                continue
            any_active = True
            low, high = (q_low[b], q_high[b]) if minmax else (one, one)
            node, depth = b * max_nodes, 0
            while depth < max_depth:  # the selection; past the leaf the numpy path walks in the sink
                if gumbel_root and depth == 0:  # this simulation's sequential-halving target
                    target = schedule[num_simulations - remaining[b]]
                    emotion = _gumbel_select(
                        edges, child_value, node_value, node, gumbel[b], logits[b], considered[b], target,
                        root_by_parent, c_visit, c_scale, one, tiny,
                    )  # fmt: skip
                else:
                    emotion = _select(
                        edges, child_value, node_value, node, completed, by_parent, minmax, low, high, one
                    )  # fmt: skip
                path_nodes[b, depth], path_emotions[b, depth] = node, emotion
                depth += 1
                node = children[node, emotion]
                if node == sink:
                    break
            parent, emotion = path_nodes[b, depth - 1], path_emotions[b, depth - 1]
            expanding = edges[parent, VISITS_PLUS_ONE, emotion] > one and depth < max_depth
            leaf_value = child_value[parent, emotion]
            if expanding and prefetched and depth == 1:  # a root child: its outputs are prefetched
                _add_child(
                    edges, prior, child_value, child_state, children, node_value, node_depth, num_nodes, max_nodes,
                    b, parent, emotion, depth, root_policy[b, emotion], root_c_prior[b, emotion],
                    root_values[b, emotion], root_dynamics[b, emotion], root_leaf[b, emotion],
                )  # fmt: skip
                leaf_value = root_leaf[b, emotion]
                expanding = False
            if expanding:
                waiting[b] = True
                path_depth[b] = depth
            else:
                _backup(
                    edges, node_visits, q_low, q_high, track, b, path_nodes[b], path_emotions[b], depth, leaf_value, one
                )  # fmt: skip
                remaining[b] -= 1
        n_waiting, n_searching = 0, 0
        for b in range(batch):
            n_waiting += waiting[b]
            n_searching += remaining[b] > 0
        if n_waiting > 0 and n_waiting >= wait_fraction * n_searching:
            for b in range(batch):  # the expansion buffer: other rows keep their last state
                if waiting[b]:
                    depth = path_depth[b]
                    observation[b] = child_state[path_nodes[b, depth - 1], path_emotions[b, depth - 1]]
            return True
        if not any_active:
            return False


# ---------------------------------------------------------------------------------------------- the driver
def _outputs(outputs: NodeOutputs | None, dtype: np.dtype, n_emotions: int, obs_dim: int, lead: tuple[int, ...]):
    """``outputs``' five arrays, C-contiguous (one compiled version per float type), or empty placeholders of the
    same types when there are none. They are in the tree's float type already (both follow the model's), so the
    cast changes no value."""
    if outputs is None:
        empty = (0,) * len(lead)
        shapes = [(*empty, n_emotions), (*empty, n_emotions), (*empty, n_emotions), (*empty, n_emotions, obs_dim)]
        return [np.zeros(shape, dtype=dtype) for shape in shapes] + [np.zeros(empty, dtype=dtype)]
    arrays = (outputs.policy, outputs.c_prior, outputs.values, outputs.dynamics, outputs.leaf_value)
    return [np.ascontiguousarray(a, dtype=dtype) for a in arrays]


def _root_arrays(root_rule: GumbelRoot | None, dtype: np.dtype, batch: int, n_emotions: int) -> tuple:
    """``run_rounds``' Gumbel root arguments from ``gumbel`` to ``tiny``: ``root_rule``'s, C-contiguous (one
    compiled version per float type), or placeholders of the same types. ``GumbelRoot.start`` draws in the tree's
    float type; anything else would be added in another type than numpy's, so it is refused, not cast."""
    tiny = np.finfo(dtype).tiny  # a scalar of the tree's type, as in GumbelRoot.sigma
    if root_rule is None:
        floats = np.zeros((batch, n_emotions), dtype=dtype)
        considered = np.zeros((batch, n_emotions), dtype=np.bool_)
        return floats, floats, considered, np.zeros(0, dtype=np.int64), False, 0.0, 0.0, tiny
    if root_rule.gumbel.dtype != dtype or root_rule.logits.dtype != dtype:
        raise ValueError("the Gumbel root's draws and logits must be in the tree's float type")
    gumbel, logits = (np.ascontiguousarray(a) for a in (root_rule.gumbel, root_rule.logits))
    considered = np.ascontiguousarray(root_rule.considered, dtype=np.bool_)
    schedule = np.ascontiguousarray(root_rule.schedule, dtype=np.int64)
    by_parent = root_rule.completed_value == "parent"
    c_visit, c_scale = float(root_rule.c_visit), float(root_rule.c_scale)
    return gumbel, logits, considered, schedule, by_parent, c_visit, c_scale, tiny


class CompiledLoop:
    """One search's simulation loop on the compiled kernel: the per-environment state between model calls.

    ``advance(wait_fraction, outputs)`` runs rounds until the next model call is due (True: its input is
    ``observation`` ``[B, obs]``, and its outputs go to the next ``advance``) or the search is done (False).
    """

    def __init__(
        self,
        tree: Tree,
        num_simulations: int,
        max_depth: int,
        rules: KernelRules,
        root_children: NodeOutputs | None,
        root_rule: GumbelRoot | None = None,
    ) -> None:
        if rules.minmax and tree.q_low is None:
            raise ValueError("a min-max Q transform needs a tree that tracks the bounds of Q")
        if not kernel_root(root_rule):
            raise ValueError(f"the compiled loop does not compute the root rule {type(root_rule).__name__}")
        if root_rule is not None and root_rule.schedule.shape != (num_simulations,):
            raise ValueError("the Gumbel root's schedule must have one target per simulation")
        self.tree, self.max_depth, self.rules = tree, max_depth, rules
        batch, n_emotions = tree.batch, tree.prior.shape[1]
        self.dtype = tree.prior.dtype
        self.obs_dim = tree.child_state.shape[-1]
        self.track = tree.q_low is not None
        bounds = (tree.q_low, tree.q_high) if self.track else (np.zeros(batch, self.dtype),) * 2
        self.bounds = bounds
        self.root_children = _outputs(root_children, self.dtype, n_emotions, self.obs_dim, (batch, n_emotions))
        self.prefetched = root_children is not None
        self.no_outputs = _outputs(None, self.dtype, n_emotions, self.obs_dim, (batch,))
        self.remaining = np.full(batch, num_simulations, dtype=np.int64)
        self.waiting = np.zeros(batch, dtype=np.bool_)
        self.path_nodes = np.zeros((batch, max_depth), dtype=np.int64)
        self.path_emotions = np.zeros((batch, max_depth), dtype=np.int64)
        self.path_depth = np.zeros(batch, dtype=np.int64)
        self.observation = np.zeros((batch, self.obs_dim), dtype=tree.child_state.dtype)
        self.num_simulations, self.gumbel_root = num_simulations, root_rule is not None
        self.root = _root_arrays(root_rule, self.dtype, batch, n_emotions)

    def advance(self, wait_fraction: float, outputs: NodeOutputs | None = None) -> bool:
        """Expand the waiting environments with ``outputs`` (the last model call's, all ``B`` rows) if given, then
        run rounds; True when the model is to be called on :attr:`observation`."""
        tree, rules = self.tree, self.rules
        n_emotions = tree.prior.shape[1]
        new = self.no_outputs if outputs is None else _outputs(outputs, self.dtype, n_emotions, self.obs_dim, ())
        return run_rounds(
            tree.edges.data, tree.prior, tree.child_value, tree.child_state, tree.children, tree.node_visits,
            tree.node_value, tree.node_depth, tree.num_nodes, *self.bounds, self.track, tree.max_nodes,
            self.max_depth, rules.completed, rules.by_parent, rules.minmax, self.dtype.type(1),
            self.prefetched, *self.root_children, outputs is not None, *new,
            self.remaining, self.waiting, self.path_nodes, self.path_emotions, self.path_depth, self.observation,
            float(wait_fraction), self.gumbel_root, self.num_simulations, *self.root,
        )  # fmt: skip
