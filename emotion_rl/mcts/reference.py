"""Literal, node-by-node emotion MCTS: the test oracle and the benchmark baseline.

This module transcribes the search of the specification (spec 1.3 ``MCTS_SEARCH``, 1.4 ``SIMULATE``,
1.5 ``APPEND_IMAGINED_STATE``) line by line, with Python :class:`Node` objects, one environment at a time and a
full model call per expansion, together with decisions 1-5:

1. ``N(n)`` in the UCB term is the sum of the visit counts of ``n``'s children, under ``sqrt(max(N(n), 1))``.
2. ``Q(n, e) = 0`` while ``N(n, e) = 0``.
3. Ties in the UCB argmax go to the lowest emotion index (the first maximum).
4. Expansion exactly as in 1.4: a node reached with ``N > 0`` and ``depth < MAX_DEPTH`` is evaluated on
   "real sequence + its imagined state" and expanded, its leaf value is the mean of the 8 values; a node
   reached with ``N = 0`` contributes its stored value; nothing at ``MAX_DEPTH`` is expanded.
5. The imagined sequence is the real sequence plus ONE imagined state (never the chain along the path).

It is deliberately slow and deliberately simple: no batching, no caching, no vectorisation. It exists so that
the batched planner (:class:`emotion_rl.mcts.search.EmotionMCTS`) can be checked against an implementation whose
correctness can be read off the spec, and so that benchmarks have a baseline. Do not optimise it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.history import NONE

__all__ = ["Node", "append_imagined_state", "literal_search", "select_child_ucb", "simulate"]


@dataclass(eq=False)
class Node:
    """A search node (spec 1.1): ``N``, ``W``, ``Q``, ``P``, ``children``, plus the model predictions of 1.3.

    ``N``, ``W`` and ``Q`` are the statistics of the edge that leads into this node (``N(parent, e)``,
    ``W(parent, e)``, ``Q(parent, e)`` in 1.2); ``P`` is the prior over this node's children (``P(n, e)``),
    set when the node is expanded. ``value``, ``predicted_state`` and ``action_logits`` are the parent's model
    outputs for this node's emotion (1.3 "Store model predictions").
    """

    parent: Node | None = None
    emotion: int | None = None
    depth: int = 0
    N: int = 0
    W: Tensor | None = None
    Q: Tensor | None = None
    P: Tensor | None = None
    children: dict[int, Node] = field(default_factory=dict)
    value: Tensor | None = None
    predicted_state: Tensor | None = None
    action_logits: Tensor | None = None

    def is_leaf(self) -> bool:
        """Spec 1.4: a node without children."""
        return not self.children


def append_imagined_state(real_seq: TensorDict, imagined_state: Tensor) -> TensorDict:
    """Spec 1.5 ``APPEND_IMAGINED_STATE``: a copy of the real sequence with one imagined state appended.

    ``real_seq`` is one environment's history ``[T]`` (entry i holds ``s_i, a_i, e_i, r_i``; a ``mask`` key, if
    any, is honoured by keeping the valid prefix only). The dummy a, e, r that precede the imagined state
    (spec: 0, 0, 0.0) are written as ``-1, -1, 0.0`` (decision 13: -1 means "none", which
    the model cannot confuse with a real action or emotion 0). They go into the last real entry's action,
    emotion and reward fields; the appended entry's own action, emotion and reward are never read and are
    also set to ``-1, -1, 0.0``. The real sequence is not modified (spec 1.6).
    """
    if "mask" in real_seq.keys():
        real_seq = real_seq[real_seq.get("mask")].exclude("mask")
    new_seq = real_seq.clone()  # COPY(real_seq)
    new_seq.get("action")[-1] = NONE  # dummy a
    new_seq.get("emotion")[-1] = NONE  # dummy e
    new_seq.get("reward")[-1] = 0.0  # dummy r
    appended = new_seq[-1:].clone()
    appended.get("observation")[0] = imagined_state  # new_seq.states.append(imagined_state)
    return torch.cat([new_seq, appended], dim=0)


def _create_children(node: Node, outputs: TensorDict) -> None:
    """The ``for e in {0, ..., 7}`` loop shared by 1.3 (root) and 1.4 (expansion): one child per emotion."""
    zero = torch.zeros((), dtype=outputs.get("values").dtype)
    for e in range(outputs.get("values").shape[-1]):
        child = Node(parent=node, emotion=e, depth=node.depth + 1, W=zero, Q=zero)  # CREATE_NODE()
        child.action_logits = outputs.get("action_logits")[e]  # outputs.actions[e]
        child.predicted_state = outputs.get("dynamics")[e]  # outputs.dynamics[e]
        child.value = outputs.get("values")[e]  # outputs.values[e]
        node.children[e] = child


def select_child_ucb(node: Node, c_puct: float) -> int:
    """Spec 1.2 ``SELECT_CHILD_UCB``: ``argmax_e Q(n, e) + c_puct * P(n, e) * sqrt(N(n)) / (1 + N(n, e))``.

    Decision 1: ``N(n)`` is the sum of the children's visit counts, used as ``sqrt(max(N(n), 1))``.
    Decision 2: ``Q(n, e) = 0`` while ``N(n, e) = 0``. Decision 3: ties go to the lowest index.
    """
    dtype = node.P.dtype
    n_parent = sum(child.N for child in node.children.values())
    sqrt_n = torch.tensor(float(max(n_parent, 1)), dtype=dtype).sqrt()
    best_e, best_score = None, None
    for e in sorted(node.children):
        child = node.children[e]
        q = child.Q if child.N > 0 else torch.zeros((), dtype=dtype)
        score = q + c_puct * node.P[e] * sqrt_n / (1 + child.N)
        if best_score is None or score > best_score:  # strict: the first maximum wins a tie
            best_e, best_score = e, score
    return best_e


def simulate(
    root: Node,
    real_sequence: TensorDict,
    model: Any,
    c_puct: float,
    max_depth: int,
    stats: dict[str, Any],
) -> None:
    """Spec 1.4 ``SIMULATE``: selection, expansion (one full model call), backpropagation."""
    node = root
    path: list[tuple[Node, int]] = []  # search path
    imagined_state = real_sequence.get("observation")[-1]  # real_sequence.last_state
    depth = 0

    # === Selection Phase ===
    while not node.is_leaf() and depth < max_depth:
        e = select_child_ucb(node, c_puct)
        path.append((node, e))
        imagined_state = node.children[e].predicted_state
        node = node.children[e]
        depth = depth + 1
    stats["max_depth_reached"] = max(stats["max_depth_reached"], depth)

    # === Expansion Phase ===
    if node.N > 0 and depth < max_depth:
        # imagined_seq = APPEND_IMAGINED_STATE(real_sequence, imagined_state), built inside the model
        # (decision 5: the real sequence plus ONE imagined state with dummy a, e, r = none, none, 0.0).
        outputs = model.evaluate(real_sequence.unsqueeze(0), imagined_observation=imagined_state.unsqueeze(0))[0]
        stats["model_calls"] += 1
        # The spec's expansion loop does not set node.P, but 1.2 needs P(n, e) at every expanded node;
        # the root gets it in 1.3 (root.P <- outputs.policy), so every expanded node does the same.
        node.P = outputs.get("policy")
        _create_children(node, outputs)
        stats["expanded_depths"].append(depth)
        # Leaf value (average Value across all emotions)
        leaf_value = outputs.get("values").mean()
    else:
        # If unexpanded, use parent's predicted Value
        if path:
            parent, e = path[-1]
            leaf_value = parent.children[e].value
        else:
            leaf_value = torch.zeros((), dtype=root.P.dtype)

    # === Backpropagation Phase ===
    for parent, e in reversed(path):
        child = parent.children[e]
        child.N = child.N + 1
        child.W = child.W + leaf_value
        child.Q = child.W / child.N


@torch.no_grad()
def literal_search(
    model: Any,
    history: TensorDict,
    num_simulations: int = 50,
    c_puct: float = 1.0,
    max_depth: int = 3,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Spec 1.3 ``MCTS_SEARCH`` for ONE environment; returns the root's visit counts, long ``[n_emotions]``.

    Args:
        model: an :class:`emotion_rl.model.EmotionModel` (anything with ``evaluate(history,
            imagined_observation=None)``). It is called once at the root and once per expansion, each time
            on the whole real sequence (no cache).
        history: the real sequence, TensorDict ``[T]`` with ``observation`` ``[T, obs]``, ``action``,
            ``emotion`` (long, -1 = none), ``reward``; an optional ``mask`` (valid prefix) is honoured by
            keeping the valid prefix only.
        num_simulations: number of ``SIMULATE`` calls (spec: 50).
        c_puct: exploration coefficient of 1.2.
        max_depth: ``MAX_DEPTH`` of 1.4 (spec: 3); must be at least 1.
        stats: if given, a dict that receives ``root`` (the tree), ``root_outputs`` (the root's model outputs),
            ``model_calls``, ``expanded_depths`` (depth of every expanded node in expansion order, the root's
            0 first), ``num_expansions`` (not counting the root) and ``max_depth_reached`` (longest path).

    The visit distribution of 1.3 is ``counts / counts.sum()`` (``NORMALIZE``); the counts are returned so that
    comparisons are exact.
    """
    if history.batch_dims != 1:
        raise ValueError(f"literal_search takes one environment's history [T], got {tuple(history.batch_size)}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if num_simulations < 0:
        raise ValueError(f"num_simulations must be >= 0, got {num_simulations}")
    if "mask" in history.keys():
        history = history[history.get("mask")].exclude("mask")
    stats = {} if stats is None else stats
    stats.update(model_calls=0, expanded_depths=[], max_depth_reached=0)

    # 1. Create root node
    root = Node()

    # 2. Expand root node
    outputs = model.evaluate(history.unsqueeze(0))[0]
    stats["model_calls"] += 1
    stats["expanded_depths"].append(0)
    root.P = outputs.get("policy")
    _create_children(root, outputs)

    # 3. Simulations
    for _ in range(num_simulations):
        simulate(root, history, model, c_puct, max_depth, stats)

    # 4. Compute visit distribution
    visit_counts = torch.tensor([root.children[e].N for e in sorted(root.children)], dtype=torch.long)
    stats.update(root=root, root_outputs=outputs, num_expansions=len(stats["expanded_depths"]) - 1)
    return visit_counts
