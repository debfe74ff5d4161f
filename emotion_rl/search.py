"""Emotion MCTS (spec 1): a batched search tree over emotions in imagined states.

The tree is a handful of arrays batched over environments, in the layout of DeepMind's mctx: node arrays of
shape ``[B, M]`` and edge arrays of shape ``[B, M, E]`` (``M = num_simulations + 1`` nodes at most: the root
plus at most one expansion per simulation). A spec "child" that was created but never expanded is an edge
``(node, e)`` whose ``children`` entry is ``-1``; its stored model outputs (``child_value``, ``child_state``)
live on the edge. All environments run their simulations in lockstep: each simulation is one batched
selection, at most one batched model call for every expansion of that simulation, and one batched backup.

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

import torch
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.model import EmotionModel, Encoding


@dataclass
class Tree:
    """Search tree arrays (spec 1.1), batched over ``B`` environments, ``M`` nodes and ``E`` emotions.

    Node ``n = {N, W, Q, P, children}`` of spec 1.1 is spread over the edge arrays of its parent: the visit
    count and value sum of child ``e`` of node ``n`` are ``child_visits[b, n, e]`` and
    ``child_value_sum[b, n, e]``; ``Q = W / N``; ``P(n, e) = prior[b, n, e]``.
    """

    prior: Tensor  # [B, M, E]   P(n, e): policy output at node n
    child_visits: Tensor  # [B, M, E]   N(n, e), long
    child_value_sum: Tensor  # [B, M, E]   W(n, e)
    child_value: Tensor  # [B, M, E]   child.value: V^e predicted at node n
    child_state: Tensor  # [B, M, E, obs] child.predicted_state: Z^e predicted at node n
    children: Tensor  # [B, M, E]   index of the expanded child node, -1 if none, long
    node_depth: Tensor  # [B, M]      depth of each node, -1 for unused slots, long
    num_nodes: Tensor  # [B]         nodes in use, long

    @classmethod
    def from_root(cls, root: TensorDict, num_nodes: int) -> Tree:
        """A tree whose root is expanded with the model's outputs on the real history (spec 1.3 step 2)."""
        batch, n_emotions = root["policy"].shape
        obs_dim = root["dynamics"].shape[-1]
        dtype, device = root["values"].dtype, root["values"].device
        tree = cls(
            prior=torch.zeros(batch, num_nodes, n_emotions, dtype=dtype, device=device),
            child_visits=torch.zeros(batch, num_nodes, n_emotions, dtype=torch.long, device=device),
            child_value_sum=torch.zeros(batch, num_nodes, n_emotions, dtype=dtype, device=device),
            child_value=torch.zeros(batch, num_nodes, n_emotions, dtype=dtype, device=device),
            child_state=torch.zeros(batch, num_nodes, n_emotions, obs_dim, dtype=dtype, device=device),
            children=torch.full((batch, num_nodes, n_emotions), -1, dtype=torch.long, device=device),
            node_depth=torch.full((batch, num_nodes), -1, dtype=torch.long, device=device),
            num_nodes=torch.zeros(batch, dtype=torch.long, device=device),
        )
        rows = torch.arange(batch, device=device)
        tree.add_node(rows, tree.num_nodes.clone(), torch.zeros_like(rows), root)
        return tree

    def add_node(self, rows: Tensor, node: Tensor, depth: Tensor, outputs: TensorDict) -> None:
        """Create node ``node`` in ``rows`` with its 8 children's stored predictions (spec 1.3 / 1.4 expansion)."""
        self.prior[rows, node] = outputs["policy"]
        self.child_value[rows, node] = outputs["values"]
        self.child_state[rows, node] = outputs["dynamics"]
        self.node_depth[rows, node] = depth
        self.num_nodes[rows] += 1

    def to_tensordict(self) -> TensorDict:
        return TensorDict(
            prior=self.prior,
            child_visits=self.child_visits,
            child_value_sum=self.child_value_sum,
            child_value=self.child_value,
            child_state=self.child_state,
            children=self.children,
            node_depth=self.node_depth,
            num_nodes=self.num_nodes,
            batch_size=self.num_nodes.shape,
        )


def ucb_scores(tree: Tree, rows: Tensor, node: Tensor, c_puct: float) -> Tensor:
    """spec 1.2 / 4.1: ``Q(n, e) + c_puct * P(n, e) * sqrt(N(n)) / (1 + N(n, e))`` for every emotion.

    ``N(n)`` is the sum of the children's counts, floored at 1 (SPEC_NOTES 1); ``Q = 0`` unvisited (SPEC_NOTES 2).
    """
    visits = tree.child_visits[rows, node].to(tree.prior.dtype)
    value_sum = tree.child_value_sum[rows, node]
    q = torch.where(visits > 0, value_sum / visits.clamp(min=1), torch.zeros_like(value_sum))
    parent_visits = visits.sum(-1, keepdim=True).clamp(min=1)
    return q + c_puct * tree.prior[rows, node] * torch.sqrt(parent_visits) / (1 + visits)


def select_child(tree: Tree, rows: Tensor, node: Tensor, c_puct: float) -> Tensor:
    """spec 1.2: ``e* = argmax_e UCB(n, e)``; ties go to the lowest index (SPEC_NOTES 3)."""
    return ucb_scores(tree, rows, node, c_puct).argmax(dim=-1)


def simulate(tree: Tree, max_depth: int, c_puct: float) -> tuple[Tensor, Tensor, Tensor]:
    """spec 1.4 selection phase: descend by UCB from the root until an unexpanded child or ``max_depth``.

    Returns the path as ``path_nodes``, ``path_emotions`` ``[B, max_depth]`` (-1 past its end) and its
    length ``depth`` ``[B]`` (the depth of the leaf reached, always >= 1: the root is expanded).
    """
    batch = tree.num_nodes.shape[0]
    device = tree.num_nodes.device
    rows = torch.arange(batch, device=device)
    node = torch.zeros(batch, dtype=torch.long, device=device)
    depth = torch.zeros(batch, dtype=torch.long, device=device)
    path_nodes = torch.full((batch, max_depth), -1, dtype=torch.long, device=device)
    path_emotions = torch.full_like(path_nodes, -1)
    descending = torch.ones(batch, dtype=torch.bool, device=device)
    for d in range(max_depth):
        emotion = select_child(tree, rows, node, c_puct)
        path_nodes[:, d] = torch.where(descending, node, -1)
        path_emotions[:, d] = torch.where(descending, emotion, -1)
        depth += descending.long()
        child = tree.children[rows, node, emotion]
        descending &= child >= 0  # stop at a leaf; nodes at max_depth are never expanded
        if not bool(descending.any()):
            break
        node = torch.where(descending, child, node)
    return path_nodes, path_emotions, depth


def expand_and_evaluate(
    tree: Tree,
    model: EmotionModel,
    encoding: Encoding,
    path_nodes: Tensor,
    path_emotions: Tensor,
    depth: Tensor,
    max_depth: int,
) -> Tensor:
    """spec 1.4 expansion phase: the leaf value of every environment's simulation, ``[B]``.

    A leaf child already visited and above ``max_depth`` is expanded with one batched model call on "real
    history + its predicted state" (spec 1.5) and is worth the mean of its 8 values; otherwise the leaf is
    worth the value its parent predicted for it.
    """
    rows = torch.arange(depth.shape[0], device=depth.device)
    parent = path_nodes[rows, depth - 1]
    emotion = path_emotions[rows, depth - 1]
    leaf_value = tree.child_value[rows, parent, emotion].clone()
    expand = (tree.child_visits[rows, parent, emotion] > 0) & (depth < max_depth)
    if bool(expand.any()):
        rows, parent, emotion = rows[expand], parent[expand], emotion[expand]
        outputs = model.evaluate_imagined(encoding, tree.child_state[rows, parent, emotion], rows)
        new_node = tree.num_nodes[rows]
        tree.children[rows, parent, emotion] = new_node
        tree.add_node(rows, new_node, depth[expand], outputs)
        leaf_value[rows] = outputs["values"].mean(dim=-1)
    return leaf_value


def backward(tree: Tree, path_nodes: Tensor, path_emotions: Tensor, leaf_value: Tensor) -> None:
    """spec 1.4 backpropagation: every edge on the path gets ``N += 1`` and ``W += leaf_value`` (Q = W / N)."""
    on_path = path_nodes >= 0
    rows = torch.arange(path_nodes.shape[0], device=path_nodes.device).unsqueeze(1).expand_as(path_nodes)
    rows, nodes, emotions = rows[on_path], path_nodes[on_path], path_emotions[on_path]
    tree.child_visits[rows, nodes, emotions] += 1
    tree.child_value_sum[rows, nodes, emotions] += leaf_value[rows]


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
        encoding = model.encode(history)
        root = model.heads(encoding.last_hidden)
        tree = Tree.from_root(root, self.num_simulations + 1)
        for _ in range(self.num_simulations):
            path_nodes, path_emotions, depth = simulate(tree, self.max_depth, self.c_puct)
            leaf_value = expand_and_evaluate(tree, model, encoding, path_nodes, path_emotions, depth, self.max_depth)
            backward(tree, path_nodes, path_emotions, leaf_value)
        visit_counts = tree.child_visits[:, 0]
        result = TensorDict(
            visit_counts=visit_counts,
            visit_distribution=visit_counts.to(root["values"].dtype) / visit_counts.sum(-1, keepdim=True),
            prior=root["policy"],
            values=root["values"],
            action_logits=root["action_logits"],
            dynamics=root["dynamics"],
            tree=tree.to_tensordict(),
            batch_size=root.batch_size,
        )
        return result.reshape(encoding.batch_shape)
