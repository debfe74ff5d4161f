"""Emotion MCTS (spec 1): a batched search tree over emotions in imagined states.

The tree is a handful of arrays batched over environments, in the layout of DeepMind's mctx: node arrays and
edge arrays ``[node, E]`` (``M = num_simulations + 1`` nodes per environment at most: the root plus at most one
expansion per simulation). A spec "child" that was created but never expanded is an edge ``(node, e)`` whose
``children`` entry is empty; its stored model outputs (``child_value``, ``child_state``) live on the edge.

How the environments share the work. Each environment runs its own simulations one after the other, exactly
as the spec's loop does; the environments are independent, so they need not be in step. Each round, every
environment that is not waiting for the model runs one selection (batched over those environments); a
simulation that ends without an expansion is backed up at once, one that needs an expansion waits. When most of
the environments still searching are waiting, one batched model call expands all of them
(:meth:`EmotionModel.evaluate_expansion`, only on those rows) and their simulations are backed up. A 16-env
search therefore makes about as many model calls as one environment has expansions (~17), not one per
simulation (50), and every environment's sequence of simulations is the spec's.

Cost model (CPU, small batches): each tensor operation costs microseconds whatever its size, so the number of
operations per round is what counts. The tree statistics are small numpy arrays on the CPU (about 1 us per
operation against 3-5 us for a torch operation); the model runs in torch on its own device. IEEE float
``+ - * / sqrt`` give the same bits in numpy and torch, and the UCB formula is evaluated in the reference's
order, so the scores are bit-identical to the literal pseudocode's. The arrays are flattened over
``(environment, node)`` with one spare "sink" node at the end: a path that stops at a leaf walks on in the sink,
whose children are the sink, so selection takes a fixed ``max_depth`` steps without masks, and backup adds to
every step of the path at once (the sink's statistics are never read). ``N(n)``, ``sqrt(max(N(n), 1))`` and
``Q = W / N`` are kept up to date by the backup, as the reference's backup keeps ``Q``.

Readings of the spec (SPEC_NOTES 1-6), each tested:

1. ``N(n)`` in the UCB term is the sum of n's children's visit counts, and ``sqrt(max(N(n), 1))`` is used so
   the first simulation at a node follows the prior.
2. ``Q(n, e) = 0`` while ``N(n, e) = 0``.
3. Ties in the UCB argmax go to the lowest emotion index.
4. Expansion exactly as spec 1.4: a child reached with ``N > 0`` at depth ``< max_depth`` is evaluated and
   expanded, its leaf value is the mean of its values; a child reached with ``N = 0`` contributes its stored
   value. Nodes at ``max_depth`` are never expanded.
5. An expansion evaluates "real history + ONE imagined state" (spec 1.5), as one token on the cached history.
6. Nothing imagined is written to the history (spec 1.6): the search reads it and returns new tensors.
7. (This project's reading, not in SPEC_NOTES.) Spec 1.4's expansion never sets the new node's prior ``P(n)``,
   which the UCB formula at that node needs: it is the policy output of the node's own evaluation, as for the
   root in 1.3 (``Tree.add_node``; tested against the literal reference, which does the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.model import EmotionModel, Expansion, ExpansionCache

Q, EXPLORE, VISITS_PLUS_ONE, VALUE_SUM, C_PRIOR = range(5)
"""Slots of a node's edge block ``Tree.edges[g] = [5, E]``: what the UCB formula reads, ``Q(n, e)``,
``c_puct * P(n, e) * sqrt(max(N(n), 1))`` and ``1 + N(n, e)``; then ``W(n, e)`` and ``c_puct * P(n, e)``."""
SLOTS = 5

WAIT_FRACTION = 0.85
"""The model is called once at least this fraction of the environments still searching wait for an expansion
(1.0: only when none can go on; lower: more calls, fewer selection rounds). Measured in benchmarks/speed.py."""


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The tree's float type: the model's (float64 or float32; float32 for half types, which numpy lacks)."""
    return np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)


def _numpy(tensor: Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.cpu().numpy()


@dataclass
class NodeOutputs:
    """The model outputs an expansion stores (spec 1.3 / 1.4), as numpy arrays with one row per new node, and the
    node's leaf value (the mean of its 8 values, spec 1.4)."""

    policy: np.ndarray  # [n, E]
    c_prior: np.ndarray  # [n, E] c_puct * policy, computed in torch as the reference computes it
    values: np.ndarray  # [n, E]
    dynamics: np.ndarray  # [n, E, obs]
    leaf_value: np.ndarray  # [n]

    @classmethod
    def from_model(cls, outputs: Expansion, c_puct: float) -> NodeOutputs:
        """From model outputs ``[*, E, ...]`` (any leading shape), in the tree's float type."""
        return cls(
            policy=_numpy(outputs.policy),
            c_prior=_numpy(c_puct * outputs.policy),
            values=_numpy(outputs.values),
            dynamics=_numpy(outputs.dynamics),
            leaf_value=_numpy(outputs.values.mean(dim=-1)),
        )

    def take(self, *index: np.ndarray) -> NodeOutputs:
        return NodeOutputs(
            *(a[index] for a in (self.policy, self.c_prior, self.values, self.dynamics, self.leaf_value))
        )


@dataclass
class Tree:
    """Search tree arrays (spec 1.1), batched over ``B`` environments, ``M`` nodes and ``E`` emotions (numpy, CPU).

    Node ``g = b * M + n`` is node ``n`` of environment ``b``; ``g = B * M`` is the sink (module docstring).
    Node ``n = {N, W, Q, P, children}`` of spec 1.1 is spread over the edge arrays of its parent: child ``e`` of
    node ``g`` has ``N = edges[g, VISITS_PLUS_ONE, e] - 1``, ``W = edges[g, VALUE_SUM, e]``,
    ``Q = edges[g, Q, e]``; ``P(g, e) = prior[g, e]``. :meth:`to_tensordict` gives the public ``[B, M, E]`` arrays.
    """

    edges: np.ndarray  # [G, 5, E]  Q, c_puct * P * sqrt(max(N(n), 1)), 1 + N, W, c_puct * P
    prior: np.ndarray  # [G, E]  P(n, e): policy output at node n
    child_value: np.ndarray  # [G, E]  child.value: V^e predicted at node n
    child_state: np.ndarray  # [G, E, obs]  child.predicted_state: Z^e predicted at node n
    children: np.ndarray  # [G, E]  global index of the expanded child node, the sink if none (int64)
    visits: np.ndarray  # [G]  N(n) = sum of the children's visit counts (SPEC_NOTES 1)
    node_depth: np.ndarray  # [G]  depth of each node, -1 for unused slots and the sink (int64)
    num_nodes: np.ndarray  # [B]  nodes in use per environment (int64)
    c_puct: float

    @property
    def batch(self) -> int:
        return self.num_nodes.shape[0]

    @property
    def max_nodes(self) -> int:
        return (self.node_depth.shape[0] - 1) // self.batch

    @property
    def sink(self) -> int:
        return self.node_depth.shape[0] - 1

    @property
    def roots(self) -> np.ndarray:
        return np.arange(self.batch) * self.max_nodes

    @classmethod
    def from_root(cls, root: Expansion, num_nodes: int, c_puct: float) -> Tree:
        """A tree whose root is expanded with the model's outputs on the real history (spec 1.3 step 2)."""
        batch, n_emotions = root.policy.shape
        obs_dim = root.dynamics.shape[-1]
        dtype = _numpy_dtype(root.values.dtype)
        size = batch * num_nodes + 1
        edges = np.zeros((size, SLOTS, n_emotions), dtype=dtype)
        edges[:, VISITS_PLUS_ONE] = 1.0
        tree = cls(
            edges=edges,
            prior=np.zeros((size, n_emotions), dtype=dtype),
            child_value=np.zeros((size, n_emotions), dtype=dtype),
            child_state=np.zeros((size, n_emotions, obs_dim), dtype=dtype),
            children=np.full((size, n_emotions), size - 1, dtype=np.int64),
            visits=np.zeros(size, dtype=dtype),
            node_depth=np.full(size, -1, dtype=np.int64),
            num_nodes=np.zeros(batch, dtype=np.int64),
            c_puct=c_puct,
        )
        rows = np.arange(batch)
        outputs = NodeOutputs.from_model(root, c_puct)
        tree.add_node(rows, rows * num_nodes, np.zeros_like(rows), outputs)
        return tree

    def add_node(self, rows: np.ndarray, node: np.ndarray, depth: np.ndarray | int, outputs: NodeOutputs) -> None:
        """Create global nodes ``node`` of environments ``rows`` with their 8 children's stored predictions (spec
        1.3 / 1.4 expansion): ``P`` is the node's own policy output (reading 7), ``V^e`` and ``Z^e`` go on the
        edges; ``c_puct * P`` times ``sqrt(max(0, 1)) = 1`` is also the first exploration term."""
        self.prior[node] = outputs.policy
        self.edges[node, C_PRIOR] = outputs.c_prior
        self.edges[node, EXPLORE] = outputs.c_prior
        self.child_value[node] = outputs.values
        self.child_state[node] = outputs.dynamics
        self.node_depth[node] = depth
        self.num_nodes[rows] += 1

    def expand(
        self, rows: np.ndarray, parent: np.ndarray, emotion: np.ndarray, depth: np.ndarray | int, outputs: NodeOutputs
    ) -> None:
        """spec 1.4 expansion: the child ``(parent, emotion)`` of each environment ``rows`` becomes a new node."""
        new_node = rows * self.max_nodes + self.num_nodes[rows]
        self.children[parent, emotion] = new_node
        self.add_node(rows, new_node, depth, outputs)

    def to_tensordict(self, device: torch.device | None = None) -> TensorDict:
        """The public tree: ``[B, M, E]`` edge arrays, ``children`` as node indices within the environment or -1."""
        batch, m = self.batch, self.max_nodes
        real = slice(0, batch * m)
        children = self.children[real].reshape(batch, m, -1)
        offset = (np.arange(batch) * m).reshape(batch, 1, 1)
        edges = self.edges[real].reshape(batch, m, SLOTS, -1)
        arrays = dict(
            prior=self.prior[real].reshape(batch, m, -1),
            child_visits=(edges[:, :, VISITS_PLUS_ONE] - 1).astype(np.int64),
            child_value_sum=edges[:, :, VALUE_SUM],
            child_value=self.child_value[real].reshape(batch, m, -1),
            child_state=self.child_state[real].reshape(batch, m, *self.child_state.shape[1:]),
            children=np.where(children == self.sink, -1, children - offset),
            node_depth=self.node_depth[real].reshape(batch, m),
            num_nodes=self.num_nodes,
        )
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
        return TensorDict(tensors, batch_size=[batch], device=device)


@dataclass
class Path:
    """The selection of one simulation for ``n`` environments (spec 1.4): ``[n, max_depth]`` global nodes and
    emotions (the sink past the leaf), the path length ``depth`` (>= 1: the root is expanded), and the leaf edge
    ``(parent, emotion)``: the last step of the path, the child that selection stopped at."""

    nodes: np.ndarray
    emotions: np.ndarray
    depth: np.ndarray
    parent: np.ndarray
    emotion: np.ndarray


def ucb_scores(tree: Tree, node: np.ndarray) -> np.ndarray:
    """spec 1.2 / 4.1: ``Q(n, e) + c_puct * P(n, e) * sqrt(N(n)) / (1 + N(n, e))`` for every emotion, ``[n, E]``.

    ``node`` holds global node indices. ``N(n)`` is the sum of the children's counts, floored at 1 (SPEC_NOTES
    1); ``Q = 0`` unvisited (SPEC_NOTES 2). The operations are those of the reference's scalar formula, in its
    order and float type, so the scores are bit-identical to it: ``c_puct * P * sqrt(max(N(n), 1))`` is the
    same product, kept up to date by :func:`backward` when ``N(n)`` changes.
    """
    edges = tree.edges.take(node, axis=0)
    return edges[:, Q] + edges[:, EXPLORE] / edges[:, VISITS_PLUS_ONE]


def select_child(tree: Tree, node: np.ndarray) -> np.ndarray:
    """spec 1.2: ``e* = argmax_e UCB(n, e)``; ties go to the lowest index (SPEC_NOTES 3: argmax returns the first
    maximum)."""
    return ucb_scores(tree, node).argmax(axis=-1)


def simulate(tree: Tree, roots: np.ndarray, max_depth: int) -> Path:
    """spec 1.4 selection phase: descend by UCB from the root until an unexpanded child or ``max_depth``.

    Every environment takes exactly ``max_depth`` steps: past its leaf it walks in the sink (whose children are
    the sink), so there are no masks.
    """
    n = roots.shape[0]
    nodes = np.empty((n, max_depth), dtype=np.int64)
    emotions = np.empty_like(nodes)
    node = roots
    for d in range(max_depth):
        emotion = select_child(tree, node)
        nodes[:, d] = node
        emotions[:, d] = emotion
        node = tree.children[node, emotion]
    depth = (nodes != tree.sink).sum(axis=1)
    last = np.arange(n), depth - 1
    return Path(nodes, emotions, depth, nodes[last], emotions[last])


def needs_expansion(tree: Tree, path: Path, max_depth: int) -> np.ndarray:
    """spec 1.4: the leaf child was visited before (``N > 0``) and lies above ``max_depth`` (SPEC_NOTES 4)."""
    return (tree.edges[path.parent, VISITS_PLUS_ONE, path.emotion] > 1) & (path.depth < max_depth)


def expand_and_evaluate(
    tree: Tree,
    model: EmotionModel,
    cache: ExpansionCache,
    observation: np.ndarray,
    rows: np.ndarray,
    pending: Path,
) -> np.ndarray:
    """spec 1.4 expansion phase for environments ``rows``: evaluate each one's leaf child ``(parent, emotion)`` of
    ``pending`` on "real history + its predicted state" (spec 1.5), add it to the tree and return its leaf
    value, the mean of its 8 values, ``[len(rows)]``.

    One batched model call over every environment (``observation`` ``[B, obs]`` is a buffer: the rows that do
    not expand keep their last imagined state, and their outputs are ignored): in this schedule most rows
    expand at each call, and the whole batch needs no gather of the key/value cache.
    """
    parent, emotion = pending.parent[rows], pending.emotion[rows]
    observation[rows] = tree.child_state[parent, emotion]
    device, dtype = cache.kv.device, cache.kv.dtype
    outputs = model.evaluate_expansion(cache, torch.from_numpy(observation).to(device, dtype))
    outputs = NodeOutputs.from_model(outputs, tree.c_puct).take(rows)
    tree.expand(rows, parent, emotion, pending.depth[rows], outputs)
    return outputs.leaf_value


def prefetch_root(tree: Tree, model: EmotionModel, cache: ExpansionCache) -> NodeOutputs:
    """The expansion outputs of the root's 8 children, ``[B, E, ...]``, in one model call before the simulations.

    A child's expansion (spec 1.4) evaluates "real history + its predicted state" (1.5), which depends on the
    state only, not on when the expansion happens; the root's children's states are known once the root is
    expanded, and almost all of them get expanded (about 7.4 of 8 per environment in benchmarks/speed.py's
    searches, half of all expansions). Evaluating them up front halves the batched calls of the simulation
    loop; the tree is unchanged: a root child still becomes a node when the spec's simulation expands it.
    """
    roots = tree.roots
    device, dtype = cache.kv.device, cache.kv.dtype
    states = torch.from_numpy(tree.child_state[roots]).to(device, dtype)  # [B, E, obs]
    return NodeOutputs.from_model(model.evaluate_children(cache, states), tree.c_puct)


def backward(tree: Tree, nodes: np.ndarray, emotions: np.ndarray, leaf_value: np.ndarray) -> None:
    """spec 1.4 backpropagation: every edge on the paths ``[n, max_depth]`` gets ``N += 1``, ``W += leaf_value``
    and ``Q = W / N``; ``N(n)`` of the nodes on the path follows, and so their exploration terms
    ``c_puct * P(n, e) * sqrt(N(n))``.

    Each environment's path has distinct edges and different environments have different nodes, so one
    indexed update per array covers them all; steps in the sink update the sink, which is never read.
    """
    n_emotions = tree.edges.shape[2]
    flat = tree.edges.reshape(-1)
    q = nodes * (SLOTS * n_emotions) + emotions  # flat index of (node, Q, emotion) in tree.edges
    visits_index, value_index = q + VISITS_PLUS_ONE * n_emotions, q + VALUE_SUM * n_emotions
    visits_plus_one = flat.take(visits_index) + 1
    value_sum = flat.take(value_index) + leaf_value[:, None]
    flat.put(visits_index, visits_plus_one)
    flat.put(value_index, value_sum)
    flat.put(q, value_sum / (visits_plus_one - 1))
    node_visits = tree.visits.take(nodes) + 1
    tree.visits.put(nodes, node_visits)
    planes = tree.edges.reshape(-1, n_emotions)  # row g * SLOTS + slot
    row = nodes * SLOTS
    planes[row + EXPLORE] = planes.take(row + C_PRIOR, axis=0) * np.sqrt(node_visits)[..., None]


class EmotionMCTS:
    """MCTS over emotions (spec 1.3): root visit distribution from ``num_simulations`` simulations.

    Args:
        num_simulations: simulations per search (spec 5: 50).
        c_puct: exploration coefficient of the UCB formula (spec 1.2: 1.0).
        max_depth: MAX_DEPTH of spec 1.4 (3).
    """

    def __init__(self, num_simulations: int = 50, c_puct: float = 1.0, max_depth: int = 3) -> None:
        if num_simulations < 1:
            raise ValueError(f"num_simulations must be >= 1, got {num_simulations}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        if c_puct < 0:
            raise ValueError(f"c_puct must be >= 0, got {c_puct}")
        self.num_simulations = num_simulations
        self.c_puct = float(c_puct)
        self.max_depth = max_depth

    def __repr__(self) -> str:
        return f"EmotionMCTS(num_simulations={self.num_simulations}, c_puct={self.c_puct}, max_depth={self.max_depth})"

    @torch.no_grad()
    def search(self, model: EmotionModel, history: TensorDict) -> TensorDict:
        """spec 1.3 MCTS_SEARCH for every history of the batch at once.

        Args:
            model: the emotion model.
            history: real history ``[*B, T]`` (see :meth:`EmotionModel.evaluate`); it is only read.

        Returns:
            TensorDict ``[*B]``: ``visit_counts`` (long ``[*B, E]``, the root children's N), ``visit_distribution``
            (normalised counts), the root's model outputs ``prior``, ``values``, ``action_logits``,
            ``dynamics``, and the tree arrays under ``tree``.
        """
        root_hidden, cache, batch_shape = model.search_prefix(history)
        root = model.heads(root_hidden)
        outputs = Expansion(root["policy"], root["values"], root["action_logits"], root["dynamics"])
        tree = Tree.from_root(outputs, self.num_simulations + 1, self.c_puct)
        # a root child can be expanded only from its second visit on, and only below max_depth
        root_children = prefetch_root(tree, model, cache) if self.max_depth > 1 and self.num_simulations > 1 else None
        self.run_simulations(tree, model, cache, root_children)
        out = tree.to_tensordict(root.device)
        visit_counts = out["child_visits"][:, 0]
        result = TensorDict(
            visit_counts=visit_counts,
            visit_distribution=visit_counts.to(root["values"].dtype) / visit_counts.sum(-1, keepdim=True),
            prior=root["policy"],
            values=root["values"],
            action_logits=root["action_logits"],
            dynamics=root["dynamics"],
            tree=out,
            batch_size=root.batch_size,
        )
        return result.reshape(batch_shape)

    def run_simulations(
        self, tree: Tree, model: EmotionModel, cache: ExpansionCache, root_children: NodeOutputs | None = None
    ) -> None:
        """spec 1.3 step 3: ``num_simulations`` simulations per environment, each environment in its own order.

        Rounds of selection for the environments not waiting for the model; a simulation without expansion is
        backed up at once, and so is one that expands a root child when ``root_children`` (:func:`prefetch_root`)
        holds its outputs; one with another expansion waits (its path kept) until the next batched model call,
        made once ``WAIT_FRACTION`` of the environments still searching wait (module docstring).
        """
        batch, max_depth, sink = tree.batch, self.max_depth, tree.sink
        roots = tree.roots
        remaining = np.full(batch, self.num_simulations)
        waiting = np.zeros(batch, dtype=bool)
        pending = Path(
            nodes=np.full((batch, max_depth), sink, dtype=np.int64),
            emotions=np.zeros((batch, max_depth), dtype=np.int64),
            depth=np.ones(batch, dtype=np.int64),
            parent=np.full(batch, sink, dtype=np.int64),
            emotion=np.zeros(batch, dtype=np.int64),
        )
        observation = np.zeros((batch, tree.child_state.shape[-1]), dtype=tree.child_state.dtype)
        while True:
            active = np.flatnonzero((remaining > 0) & ~waiting)
            if active.shape[0]:
                path = simulate(tree, roots[active], max_depth)
                expand = needs_expansion(tree, path, max_depth)
                leaf_value = tree.child_value[path.parent, path.emotion]
                nodes = path.nodes
                if root_children is not None and expand.any():
                    ready = expand & (path.depth == 1)  # a root child: its outputs are prefetched
                    if ready.any():
                        rows, emotion = active[ready], path.emotion[ready]
                        outputs = root_children.take(rows, emotion)
                        tree.expand(rows, path.parent[ready], emotion, 1, outputs)
                        leaf_value[ready] = outputs.leaf_value
                        expand &= ~ready
                if expand.any():
                    rows = active[expand]
                    waiting[rows] = True
                    pending.nodes[rows], pending.emotions[rows] = path.nodes[expand], path.emotions[expand]
                    pending.parent[rows], pending.emotion[rows] = path.parent[expand], path.emotion[expand]
                    pending.depth[rows] = path.depth[expand]
                    nodes = np.where(expand[:, None], sink, nodes)  # backed up after their expansion
                backward(tree, nodes, path.emotions, leaf_value)
                remaining[active] -= ~expand
            n_waiting = np.count_nonzero(waiting)
            if n_waiting and n_waiting >= WAIT_FRACTION * np.count_nonzero(remaining):
                rows = np.flatnonzero(waiting)
                leaf_value = expand_and_evaluate(tree, model, cache, observation, rows, pending)
                backward(tree, pending.nodes[rows], pending.emotions[rows], leaf_value)
                remaining[rows] -= 1
                waiting[rows] = False
            elif not active.shape[0]:
                break
