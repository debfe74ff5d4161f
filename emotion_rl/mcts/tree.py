"""The search tree (spec 1.1) as a few numpy arrays batched over environments, and what a model gives it.

Node ``g = b * M + n`` is node ``n`` of environment ``b`` (``M = num_simulations + 1``); ``g = B * M`` is the
sink, a spare node whose children are itself, so a selection walks a fixed number of steps without masks and a
backup writes every step at once (the sink is never read). A spec node's ``N, W, Q`` live on the edge from its
parent: ``edges`` packs, per node, the five ``[E]`` rows the selection reads together. Only this module indexes
into the packing; everyone else reads the named views (``q``, ``visits``, ``value_sum``, ``prior`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.model import state_value

__all__ = ["EdgeArrays", "Expansion", "NodeOutputs", "SearchModel", "Tree"]


class Expansion(NamedTuple):
    """Model outputs at ``n`` states (spec 1.3, 1.4): ``policy`` ``[n, E]`` probabilities, ``values`` ``[n, E]``,
    ``action_logits`` ``[n, E, A]``, ``dynamics`` ``[n, E, obs]``; plain tensors."""

    policy: Tensor
    values: Tensor
    action_logits: Tensor
    dynamics: Tensor


class SearchModel(Protocol):
    """What the planner asks of a model (``mcts/search_model.py`` adapts :class:`~emotion_rl.model.EmotionModel`)."""

    def root(self, history: TensorDictBase) -> tuple[Expansion, Any]:
        """Outputs ``[N]`` at each history's last step (batch flattened) and a state the expansions read."""

    def expand(self, state: Any, observation: Tensor) -> Expansion:
        """Outputs ``[N]`` at "real history of row ``n`` + imagined ``observation[n]``" for every row."""

    def children(self, state: Any, observation: Tensor) -> Expansion:
        """Outputs ``[N, Q]`` for ``Q`` imagined states per row, each on its own (decision 5)."""


Q, EXPLORE, VISITS_PLUS_ONE, VALUE_SUM, C_PRIOR = range(5)
"""Rows of a node's edge block ``[5, E]``: ``Q(n, e)``, ``c_puct * P(n, e) * sqrt(max(N(n), 1))``,
``1 + N(n, e)``, ``W(n, e)``, ``c_puct * P(n, e)``. The first three are what the pUCT score reads."""
SLOTS = 5


class EdgeArrays:
    """Named views over packed edge statistics ``[..., 5, E]`` (the whole tree, or a gather at some nodes)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def at(self, node: np.ndarray) -> EdgeArrays:
        """The edges of nodes ``node`` ``[n]`` (one gather), ``[n, 5, E]``."""
        return EdgeArrays(self.data.take(node, axis=0))

    @property
    def q(self) -> np.ndarray:
        """``Q(n, e) = W / N``, 0 while unvisited (decision 2)."""
        return self.data[..., Q, :]

    @property
    def explore(self) -> np.ndarray:
        """``c_puct * P(n, e) * sqrt(max(N(n), 1))`` (decision 1), kept up to date by :meth:`Tree.backup`."""
        return self.data[..., EXPLORE, :]

    @property
    def visits_plus_one(self) -> np.ndarray:
        """``1 + N(n, e)``, in the tree's float type (the pUCT denominator)."""
        return self.data[..., VISITS_PLUS_ONE, :]

    @property
    def value_sum(self) -> np.ndarray:
        """``W(n, e)``."""
        return self.data[..., VALUE_SUM, :]

    @property
    def c_prior(self) -> np.ndarray:
        """``c_puct * P(n, e)``."""
        return self.data[..., C_PRIOR, :]

    @property
    def visits(self) -> np.ndarray:
        """``N(n, e)`` as integers."""
        return (self.visits_plus_one - 1).astype(np.int64)


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The tree's float type: the model's (float64 or float32; float32 for half types, which numpy lacks)."""
    return np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)


def to_numpy(tensor: Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.cpu().numpy()


def host_arrays(tensors: Sequence[Tensor], batched: bool | None = None) -> list[np.ndarray]:
    """:func:`to_numpy` of each tensor. ``batched`` (default: when they live on an accelerator and share a float
    type): through one concatenated device-to-host copy, one synchronisation per model call instead of one per
    array; the values are the same."""
    dtypes = {t.dtype for t in tensors}
    if batched is None:
        batched = len(dtypes) == 1 and tensors[0].device.type != "cpu"
    if not batched:
        return [to_numpy(t) for t in tensors]
    dtype = dtypes.pop() if len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64} else torch.float32
    flat = to_numpy(torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors]))
    ends = np.cumsum([t.numel() for t in tensors])[:-1]
    return [part.reshape(t.shape) for part, t in zip(np.split(flat, ends), tensors, strict=True)]


@dataclass
class NodeOutputs:
    """What an expansion stores, one row per new node (numpy): ``policy``, ``c_prior`` (``c_puct * policy``,
    computed in torch as the reference does), ``values``, ``dynamics`` and the leaf value (the node's value read
    by ``value_readout``: the mean of its values, spec 1.4, or ``sum_e policy * values``)."""

    policy: np.ndarray  # [n, E]
    c_prior: np.ndarray  # [n, E]
    values: np.ndarray  # [n, E]
    dynamics: np.ndarray  # [n, E, obs]
    leaf_value: np.ndarray  # [n]

    @classmethod
    def from_model(cls, outputs: Expansion, c_puct: float, value_readout: str = "mean") -> NodeOutputs:
        """From model outputs ``[*, E, ...]`` (any leading shape), in the tree's float type; the leaf value is
        computed in torch by :func:`~emotion_rl.model.state_value` from the same outputs, whatever the adapter."""
        leaf_value = state_value(outputs.values, outputs.policy, value_readout)
        policy = outputs.policy
        return cls(*host_arrays((policy, c_puct * policy, outputs.values, outputs.dynamics, leaf_value)))

    def take(self, *index: np.ndarray) -> NodeOutputs:
        arrays = (self.policy, self.c_prior, self.values, self.dynamics, self.leaf_value)
        return NodeOutputs(*(a[index] for a in arrays))


@dataclass
class Tree:
    """Search tree arrays (spec 1.1) over ``G = B * M + 1`` nodes (the last one the sink) and ``E`` emotions."""

    edges: EdgeArrays  # [G, 5, E] packed edge statistics (named views)
    prior: np.ndarray  # [G, E] P(n, e): the node's own policy output (decision 14)
    child_value: np.ndarray  # [G, E] V^e predicted at node n: an unexpanded child's value
    child_state: np.ndarray  # [G, E, obs] Z^e predicted at node n: the child's imagined state
    children: np.ndarray  # [G, E] global index of the expanded child node, the sink if none (int64)
    node_visits: np.ndarray  # [G] N(n) = sum of the children's visit counts (decision 1)
    node_value: np.ndarray  # [G] the node's leaf value at its expansion (its E values read by value_readout)
    node_depth: np.ndarray  # [G] depth, -1 for unused slots and the sink (int64)
    num_nodes: np.ndarray  # [B] nodes in use per environment (int64)
    c_puct: float
    q_low: np.ndarray | None = None  # [B] smallest Q backed up so far, when tracked (min-max Q transform)
    q_high: np.ndarray | None = None  # [B] largest
    value_readout: str = "mean"  # how a node's value is read from its outputs (NodeOutputs.from_model)

    # ------------------------------------------------------------------ named views
    @property
    def q(self) -> np.ndarray:
        return self.edges.q

    @property
    def visits(self) -> np.ndarray:
        return self.edges.visits

    @property
    def value_sum(self) -> np.ndarray:
        return self.edges.value_sum

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

    def environment(self, node: np.ndarray) -> np.ndarray:
        """The environment each global node belongs to (the sink: the last one; what is read there is unused)."""
        return np.minimum(node // self.max_nodes, self.batch - 1)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_root(
        cls, root: Expansion, num_nodes: int, c_puct: float, track_bounds: bool = False, value_readout: str = "mean"
    ) -> Tree:
        """A tree whose roots are expanded with the model's outputs on the real histories (spec 1.3 step 2);
        ``track_bounds``: keep each environment's smallest and largest backed-up ``Q``; ``value_readout``: how
        every node's value is read (``"mean"``, spec 1.4, or ``"policy"``), the roots' included."""
        batch, n_emotions = root.policy.shape
        obs_dim = root.dynamics.shape[-1]
        dtype = numpy_dtype(root.values.dtype)
        size = batch * num_nodes + 1
        edges = np.zeros((size, SLOTS, n_emotions), dtype=dtype)
        edges[:, VISITS_PLUS_ONE] = 1.0
        tree = cls(
            edges=EdgeArrays(edges),
            prior=np.zeros((size, n_emotions), dtype=dtype),
            child_value=np.zeros((size, n_emotions), dtype=dtype),
            child_state=np.zeros((size, n_emotions, obs_dim), dtype=dtype),
            children=np.full((size, n_emotions), size - 1, dtype=np.int64),
            node_visits=np.zeros(size, dtype=dtype),
            node_value=np.zeros(size, dtype=dtype),
            node_depth=np.full(size, -1, dtype=np.int64),
            num_nodes=np.zeros(batch, dtype=np.int64),
            c_puct=c_puct,
            value_readout=value_readout,
        )
        if track_bounds:
            tree.q_low, tree.q_high = np.full(batch, np.inf, dtype=dtype), np.full(batch, -np.inf, dtype=dtype)
        rows = np.arange(batch)
        tree.add_node(rows, rows * num_nodes, 0, NodeOutputs.from_model(root, c_puct, value_readout))
        return tree

    def add_node(self, rows: np.ndarray, node: np.ndarray, depth: np.ndarray | int, outputs: NodeOutputs) -> None:
        """Create global nodes ``node`` of environments ``rows`` with their children's stored predictions (spec
        1.3 / 1.4); with ``N(n) = 0`` the first exploration term is ``c_puct * P`` (decision 1)."""
        self.prior[node] = outputs.policy
        self.edges.c_prior[node] = outputs.c_prior
        self.edges.explore[node] = outputs.c_prior
        self.child_value[node] = outputs.values
        self.child_state[node] = outputs.dynamics
        self.node_value[node] = outputs.leaf_value
        self.node_depth[node] = depth
        self.num_nodes[rows] += 1

    def set_prior(self, node: np.ndarray, prior: np.ndarray) -> None:
        """Replace ``P`` at nodes that have no visits yet (root noise): ``prior``, ``c_prior``, ``explore``."""
        c_prior = (self.c_puct * prior).astype(self.prior.dtype)
        self.prior[node] = prior
        self.edges.c_prior[node] = c_prior
        self.edges.explore[node] = c_prior * np.sqrt(np.maximum(self.node_visits[node], 1.0))[:, None]

    def expand(
        self, rows: np.ndarray, parent: np.ndarray, emotion: np.ndarray, depth: np.ndarray | int, outputs: NodeOutputs
    ) -> None:
        """spec 1.4 expansion: the child ``(parent, emotion)`` of each environment ``rows`` becomes a new node."""
        new_node = rows * self.max_nodes + self.num_nodes[rows]
        self.children[parent, emotion] = new_node
        self.add_node(rows, new_node, depth, outputs)

    def backup(self, nodes: np.ndarray, emotions: np.ndarray, leaf_value: np.ndarray) -> None:
        """spec 1.4 backpropagation along paths ``[n, D]`` of global nodes and emotions (the sink past the leaf):
        ``N += 1``, ``W += leaf_value``, ``Q = W / N`` on every edge, then ``N(n)`` and the exploration terms.

        A path's edges are distinct and environments own distinct nodes, so one indexed write per array does it.
        """
        n_emotions = self.edges.data.shape[2]
        flat = self.edges.data.reshape(-1)
        q = nodes * (SLOTS * n_emotions) + emotions  # flat index of (node, Q, emotion)
        visits_index, value_index = q + VISITS_PLUS_ONE * n_emotions, q + VALUE_SUM * n_emotions
        visits_plus_one = flat.take(visits_index) + 1
        value_sum = flat.take(value_index) + leaf_value[:, None]
        flat.put(visits_index, visits_plus_one)
        flat.put(value_index, value_sum)
        q_value = value_sum / (visits_plus_one - 1)
        flat.put(q, q_value)
        if self.q_low is not None:  # one path per environment: no two rows share a bound
            real = nodes != self.sink
            rows = real[:, 0]  # paths held back for an expansion are all sink
            env, real, q_value = self.environment(nodes[rows, 0]), real[rows], q_value[rows]
            self.q_low[env] = np.minimum(self.q_low[env], np.where(real, q_value, np.inf).min(axis=1))
            self.q_high[env] = np.maximum(self.q_high[env], np.where(real, q_value, -np.inf).max(axis=1))
        node_visits = self.node_visits.take(nodes) + 1
        self.node_visits.put(nodes, node_visits)
        planes = self.edges.data.reshape(-1, n_emotions)  # row g * SLOTS + slot
        row = nodes * SLOTS
        planes[row + EXPLORE] = planes.take(row + C_PRIOR, axis=0) * np.sqrt(node_visits)[..., None]

    def clear_sink(self) -> None:
        """Reset the sink's statistics, which the numpy loop's backups fill with garbage (never read), to their
        state at construction; the compiled loop never writes them, so both loops leave the same arrays."""
        self.edges.data[self.sink] = 0.0
        self.edges.data[self.sink, VISITS_PLUS_ONE] = 1.0
        self.node_visits[self.sink] = 0.0

    # ------------------------------------------------------------------ reading
    def to_tensordict(self, device: torch.device | None = None) -> TensorDict:
        """The public tree ``[B]``: ``[B, M, E]`` arrays, ``children`` as node indices within the environment or -1."""
        batch, m = self.batch, self.max_nodes
        real = slice(0, batch * m)
        children = self.children[real].reshape(batch, m, -1)
        offset = (np.arange(batch) * m).reshape(batch, 1, 1)
        edges = EdgeArrays(self.edges.data[real].reshape(batch, m, SLOTS, -1))
        arrays = dict(
            prior=self.prior[real].reshape(batch, m, -1),
            child_visits=edges.visits,
            child_value_sum=edges.value_sum,
            child_value=self.child_value[real].reshape(batch, m, -1),
            child_state=self.child_state[real].reshape(batch, m, *self.child_state.shape[1:]),
            children=np.where(children == self.sink, -1, children - offset),
            node_depth=self.node_depth[real].reshape(batch, m),
            num_nodes=self.num_nodes,
        )
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
        return TensorDict(tensors, batch_size=[batch], device=device)
