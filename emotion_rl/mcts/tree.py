"""The search tree (spec 1.1) as a few numpy arrays batched over environments, and what a model gives it.

Node ``g = b * M + n`` is node ``n`` of environment ``b`` (``M = num_simulations + 1``, enough for one expansion
per simulation plus the root); ``g = B * M`` is the sink, a spare node whose children are itself, so that a path
always has room for ``max_depth`` steps. A spec node's ``N, W, Q`` live on the edge from its parent: row ``g`` of
``q``, ``visits_plus_one`` and ``value_sum`` holds the statistics of node ``g``'s ``E`` children. The simulation
loop (``loop.py``) reads and writes these arrays; nothing else changes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

__all__ = ["Expansion", "NodeOutputs", "SearchModel", "Tree", "TreeArrays"]


class Expansion(NamedTuple):
    """Model outputs at ``n`` states (spec 1.3, 1.4): ``policy`` ``[n, E]`` probabilities, ``values`` ``[n, E]``,
    ``action_logits`` ``[n, E, A]``, ``dynamics`` ``[n, E, obs]``, and ``value`` ``[n]``, the state's value (the
    leaf value a simulation backs up: the model's readout of ``values``, spec 1.4); plain tensors."""

    policy: Tensor
    values: Tensor
    action_logits: Tensor
    dynamics: Tensor
    value: Tensor


class SearchModel(Protocol):
    """What the planner asks of a model (``search_model.py`` adapts :class:`~emotion_rl.model.EmotionModel`)."""

    def root(self, history: TensorDictBase) -> tuple[Expansion, Any]:
        """Outputs ``[N]`` at each history's last step (batch flattened) and a state the expansions read."""

    def expand(self, state: Any, observation: Tensor) -> Expansion:
        """Outputs ``[N]`` at "real history of row ``n`` + imagined ``observation[n]``" for every row."""

    def children(self, state: Any, observation: Tensor) -> Expansion:
        """Outputs ``[N, Q]`` for ``Q`` imagined states per row, each on its own (decision 5)."""


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


class NodeOutputs(NamedTuple):
    """What an expansion stores, one row per new node (numpy): ``policy``, ``c_prior`` (``c_puct * policy``,
    computed in torch as the literal search does), ``values``, ``dynamics`` and the leaf value (the model's value of
    the node's state, spec 1.4)."""

    policy: np.ndarray  # [n, E]
    c_prior: np.ndarray  # [n, E]
    values: np.ndarray  # [n, E]
    dynamics: np.ndarray  # [n, E, obs]
    leaf_value: np.ndarray  # [n]

    @classmethod
    def from_model(cls, outputs: Expansion, c_puct: float, dtype: np.dtype | None = None) -> NodeOutputs:
        """From model outputs ``[*, E, ...]`` (any leading shape), in the tree's float type (``dtype``, default the
        outputs'), C-contiguous."""
        policy = outputs.policy
        arrays = host_arrays((policy, c_puct * policy, outputs.values, outputs.dynamics, outputs.value))
        dtype = dtype or arrays[0].dtype
        return cls(*(np.ascontiguousarray(a, dtype=dtype) for a in arrays))

    @classmethod
    def empty(cls, dtype: np.dtype, n_emotions: int, obs_dim: int, lead: tuple[int, ...] = (0,)) -> NodeOutputs:
        """No outputs, in the shapes and types the loop's arguments have (a placeholder)."""
        return cls(
            *(np.zeros((*lead, n_emotions), dtype) for _ in range(3)),
            np.zeros((*lead, n_emotions, obs_dim), dtype),
            np.zeros(lead, dtype),
        )

    def take(self, *index: np.ndarray) -> NodeOutputs:
        return NodeOutputs(*(a[index] for a in self))


class TreeArrays(NamedTuple):
    """The tree's arrays as the compiled loop takes them (one argument)."""

    q: np.ndarray
    explore: np.ndarray
    visits_plus_one: np.ndarray
    value_sum: np.ndarray
    c_prior: np.ndarray
    prior: np.ndarray
    child_value: np.ndarray
    child_state: np.ndarray
    children: np.ndarray
    node_visits: np.ndarray
    node_value: np.ndarray
    node_depth: np.ndarray
    num_nodes: np.ndarray
    q_low: np.ndarray
    q_high: np.ndarray


@dataclass
class Tree:
    """Search tree arrays (spec 1.1) over ``G = B * M + 1`` nodes (the last one the sink) and ``E`` emotions.

    Per node ``g`` and emotion ``e`` (``[G, E]``): ``q`` ``Q(g, e) = W / N`` (0 while unvisited, decision 2),
    ``visits_plus_one`` ``1 + N(g, e)`` in the float type (the pUCT denominator), ``value_sum`` ``W(g, e)``,
    ``prior`` ``P(g, e)`` (the node's own policy output, decision 14), ``c_prior`` ``c_puct * P``, ``explore``
    ``c_puct * P * sqrt(max(N(g), 1))`` (decision 1, kept up to date by each backup), ``child_value`` ``V^e``
    predicted at ``g`` (an unexpanded child's value), ``child_state`` ``[G, E, obs]`` ``Z^e`` (the child's imagined
    state), ``children`` the expanded child's global index or the sink. Per node ``[G]``: ``node_visits`` ``N(g)``
    (sum of the children's counts, decision 1), ``node_value`` (its leaf value at expansion), ``node_depth`` (-1
    for unused slots and the sink). Per environment ``[B]``: ``num_nodes`` in use, ``q_low`` / ``q_high`` the
    smallest and largest ``Q`` backed up so far (read by the min-max Q transform).
    """

    arrays: TreeArrays
    c_puct: float

    def __getattr__(self, name: str) -> np.ndarray:  # tree.q, tree.prior, ...: the named arrays
        if name in TreeArrays._fields:
            return getattr(self.arrays, name)
        raise AttributeError(name)

    @property
    def batch(self) -> int:
        return self.arrays.num_nodes.shape[0]

    @property
    def max_nodes(self) -> int:
        return (self.arrays.node_depth.shape[0] - 1) // self.batch

    @property
    def sink(self) -> int:
        return self.arrays.node_depth.shape[0] - 1

    @property
    def roots(self) -> np.ndarray:
        return np.arange(self.batch) * self.max_nodes

    @property
    def visits(self) -> np.ndarray:
        """``N(g, e)`` as integers ``[G, E]``."""
        return (self.arrays.visits_plus_one - 1).astype(np.int64)

    @classmethod
    def from_root(cls, root: NodeOutputs, num_nodes: int, c_puct: float) -> Tree:
        """A tree whose roots are expanded with the model's outputs on the real histories (spec 1.3 step 2), with
        room for ``num_nodes`` nodes per environment; the tree's float type is the outputs'."""
        batch, n_emotions = root.policy.shape
        obs_dim = root.dynamics.shape[-1]
        dtype = root.policy.dtype
        size = batch * num_nodes + 1

        def zeros(*shape: int) -> np.ndarray:
            return np.zeros((size, *shape), dtype=dtype)

        arrays = TreeArrays(
            q=zeros(n_emotions),
            explore=zeros(n_emotions),
            visits_plus_one=np.ones((size, n_emotions), dtype=dtype),
            value_sum=zeros(n_emotions),
            c_prior=zeros(n_emotions),
            prior=zeros(n_emotions),
            child_value=zeros(n_emotions),
            child_state=zeros(n_emotions, obs_dim),
            children=np.full((size, n_emotions), size - 1, dtype=np.int64),
            node_visits=zeros(),
            node_value=zeros(),
            node_depth=np.full(size, -1, dtype=np.int64),
            num_nodes=np.ones(batch, dtype=np.int64),
            q_low=np.full(batch, np.inf, dtype=dtype),
            q_high=np.full(batch, -np.inf, dtype=dtype),
        )
        tree = cls(arrays, float(c_puct))
        roots = tree.roots
        arrays.prior[roots] = root.policy
        arrays.c_prior[roots] = root.c_prior
        arrays.explore[roots] = root.c_prior  # N(root) = 0: sqrt(max(N, 1)) = 1 (decision 1)
        arrays.child_value[roots] = root.values
        arrays.child_state[roots] = root.dynamics
        arrays.node_value[roots] = root.leaf_value
        arrays.node_depth[roots] = 0
        return tree

    def to_tensordict(self, device: torch.device | None = None) -> TensorDict:
        """The public tree ``[B]``: ``[B, M, E]`` arrays, ``children`` as node indices within the environment or -1."""
        batch, m = self.batch, self.max_nodes
        real = slice(0, batch * m)

        def per_env(array: np.ndarray) -> np.ndarray:
            return array[real].reshape(batch, m, *array.shape[1:])

        children = per_env(self.children)
        offset = (np.arange(batch) * m).reshape(batch, 1, 1)
        arrays = dict(
            prior=per_env(self.prior),
            child_visits=per_env(self.visits),
            child_value_sum=per_env(self.value_sum),
            child_value=per_env(self.child_value),
            child_state=per_env(self.child_state),
            children=np.where(children == self.sink, -1, children - offset),
            node_depth=per_env(self.node_depth),
            num_nodes=self.num_nodes,
        )
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
        return TensorDict(tensors, batch_size=[batch], device=device)
