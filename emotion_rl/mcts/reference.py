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

The options beyond the specification that the planner offers are transcribed here too, each from its own
definition (docs/search.md): the Q transforms (completed values, min-max normalisation with a floor) and the
Gumbel MuZero root (Gumbel-top-k, sequential halving, the improved policy). The oracle takes the search's draws
as arguments (the Gumbel variables) instead of drawing them.

It is deliberately slow and deliberately simple: no batching, no caching, no vectorisation. It exists so that
the batched planner (:class:`emotion_rl.mcts.search.EmotionMCTS`) can be checked against an implementation whose
correctness can be read off the spec, and so that benchmarks have a baseline. Do not optimise it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.history import NONE

__all__ = ["GumbelSettings", "Node", "append_imagined_state", "literal_search", "select_child_ucb", "simulate"]


@dataclass(eq=False)
class Node:
    """A search node (spec 1.1): ``N``, ``W``, ``Q``, ``P``, ``children``, plus the model predictions of 1.3.

    ``N``, ``W`` and ``Q`` are the statistics of the edge that leads into this node (``N(parent, e)``,
    ``W(parent, e)``, ``Q(parent, e)`` in 1.2); ``P`` is the prior over this node's children (``P(n, e)``),
    set when the node is expanded. ``value``, ``predicted_state`` and ``action_logits`` are the parent's model
    outputs for this node's emotion (1.3 "Store model predictions"); ``leaf_value`` is the node's own value at
    its expansion (the model's ``value``: the mean of its 8 values), backed up from an expansion.
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
    leaf_value: Tensor | None = None

    def is_leaf(self) -> bool:
        """Spec 1.4: a node without children."""
        return not self.children


@dataclass
class GumbelSettings:
    """The Gumbel MuZero root (Danihelka et al. 2022): ``considered`` emotions sampled by Gumbel-top-k on the
    root's log prior with the Gumbel variables ``gumbel`` ``[E]`` (zeros: the top logits), simulations shared by
    sequential halving, ``sigma(q) = (c_visit + max_b N(b)) * c_scale * q``."""

    gumbel: np.ndarray
    considered: int = 8
    c_visit: float = 50.0
    c_scale: float = 0.1


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
    node.leaf_value = outputs.get("value")  # the model's value of the node's state: the mean of its 8 values
    for e in range(outputs.get("values").shape[-1]):
        child = Node(parent=node, emotion=e, depth=node.depth + 1, W=zero, Q=zero)  # CREATE_NODE()
        child.action_logits = outputs.get("action_logits")[e]  # outputs.actions[e]
        child.predicted_state = outputs.get("dynamics")[e]  # outputs.dynamics[e]
        child.value = outputs.get("values")[e]  # outputs.values[e]
        node.children[e] = child


# ---------------------------------------------------------------------------------------------- Q (spec 1.2)
def completed_q(child: Node) -> Tensor:
    """``Q(n, e)`` where visited; an unvisited child's completion: its own predicted value ``V^e``."""
    if child.N > 0:
        return child.Q
    return child.value


def transformed_q(node: Node, child: Node, options: dict[str, Any], bounds: list[Tensor]) -> Tensor:
    """The ``Q`` the UCB score reads: decision 2's (0 while unvisited) or a transform (docs/search.md): completed
    values, and min-max normalisation by the smallest and largest ``Q`` backed up in this tree (``bounds``), its
    spread floored at ``min_spread``, clipped to [0, 1], 0 until two different ``Q`` were seen."""
    dtype = node.P.dtype
    zero = torch.zeros((), dtype=dtype)
    transform = options["q_transform"]
    completed = transform.endswith("completed")
    q = completed_q(child) if completed else (child.Q if child.N > 0 else zero)
    if not transform.startswith("minmax"):
        return q
    low, high = bounds
    spread = high - low
    if not (spread > 0) or not (completed or child.N > 0):
        return zero
    floor = torch.tensor(options["min_spread"], dtype=dtype)
    if spread < floor:
        spread = floor
    return ((q - low) / spread).clamp(0.0, 1.0)


def select_child_ucb(node: Node, c_puct: float, options: dict[str, Any] | None = None, bounds=None) -> int:
    """Spec 1.2 ``SELECT_CHILD_UCB``: ``argmax_e Q(n, e) + c_puct * P(n, e) * sqrt(N(n)) / (1 + N(n, e))``.

    Decision 1: ``N(n)`` is the sum of the children's visit counts, used as ``sqrt(max(N(n), 1))``.
    Decision 2: ``Q(n, e) = 0`` while ``N(n, e) = 0`` (unless ``options`` name a Q transform).
    Decision 3: ties go to the lowest index.
    """
    dtype = node.P.dtype
    n_parent = sum(child.N for child in node.children.values())
    sqrt_n = torch.tensor(math.sqrt(max(n_parent, 1)), dtype=dtype)  # correctly rounded in float32 too
    best_e, best_score = None, None
    for e in sorted(node.children):
        child = node.children[e]
        if options is None:
            q = child.Q if child.N > 0 else torch.zeros((), dtype=dtype)
        else:
            q = transformed_q(node, child, options, bounds)
        score = q + c_puct * node.P[e] * sqrt_n / (1 + child.N)
        if best_score is None or score > best_score:  # strict: the first maximum wins a tie
            best_e, best_score = e, score
    return best_e


# ---------------------------------------------------------------------------------------------- Gumbel root
def halving_targets(considered: int, num_simulations: int) -> list[int]:
    """Sequential halving (Karnin et al. 2013, as Gumbel MuZero uses it): ``ceil(log2 m)`` phases; in each, every
    child still considered gets ``max(1, floor(n / (phases * alive)))`` more visits, in turn, then the better half
    stays (at least two). Simulation ``k`` goes to a considered child visited ``targets[k]`` times."""
    if considered <= 1:
        return list(range(num_simulations))
    phases = math.ceil(math.log2(considered))
    targets, visits, alive = [], 0, considered
    while len(targets) < num_simulations:
        for _ in range(max(1, num_simulations // (phases * alive))):
            targets.extend([visits] * alive)
            visits += 1
        alive = max(2, alive // 2)
    return targets[:num_simulations]


def gumbel_scores(
    root: Node, gumbel: GumbelSettings, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The root's ``logits`` (log prior) and ``g + logits`` in the tree's float type and ``sigma(completed Q)`` in
    float64, ``[E]`` each.
    The completed ``Q`` is rescaled to [0, 1] by its own min and max, the spread floored at ``max(min_spread,
    tiny)``."""
    dtype = np.dtype(np.float64) if root.P.dtype == torch.float64 else np.dtype(np.float32)
    emotions = sorted(root.children)
    prior = root.P.detach().cpu().numpy().astype(dtype)
    with np.errstate(divide="ignore"):
        logits = np.log(prior)
    base = gumbel.gumbel.astype(dtype) + logits
    q = np.array([completed_q(root.children[e]).item() for e in emotions], dtype)
    floor = max(dtype.type(options["min_spread"]), np.finfo(dtype).tiny)
    spread = max(q.max() - q.min(), floor)
    max_visits = max(root.children[e].N for e in emotions)
    scale = (gumbel.c_visit + float(max_visits)) * gumbel.c_scale
    sigma = scale * ((q - q.min()) / spread).astype(np.float64)
    return logits, base, sigma


def gumbel_considered(root: Node, gumbel: GumbelSettings) -> list[int]:
    """The ``considered`` emotions with the largest ``g + logits`` (ties to the lowest index)."""
    _, base, _ = gumbel_scores(root, gumbel, {"min_spread": 0.0})
    order = sorted(range(len(base)), key=lambda e: (-base[e], e))
    return sorted(order[: min(gumbel.considered, len(base))])


def gumbel_choice(root: Node, gumbel: GumbelSettings, options: dict[str, Any], chosen: list[int], target: int) -> int:
    """Among the considered children visited ``target`` times, the first maximum of ``g + logits + sigma``."""
    _, base, sigma = gumbel_scores(root, gumbel, options)
    eligible = [e for e in chosen if root.children[e].N == target]
    return max(eligible, key=lambda e: (np.float64(base[e]) + sigma[e], -e))


# ---------------------------------------------------------------------------------------------- the search
def simulate(
    root: Node,
    real_sequence: TensorDict,
    model: Any,
    c_puct: float,
    max_depth: int,
    stats: dict[str, Any],
    options: dict[str, Any] | None = None,
    root_emotion: int | None = None,
) -> None:
    """Spec 1.4 ``SIMULATE``: selection, expansion (one full model call), backpropagation. ``root_emotion``: the
    root rule's choice at the root (the Gumbel root), instead of the UCB score."""
    node = root
    path: list[tuple[Node, int]] = []  # search path
    imagined_state = real_sequence.get("observation")[-1]  # real_sequence.last_state
    depth = 0

    # === Selection Phase ===
    while not node.is_leaf() and depth < max_depth:
        if depth == 0 and root_emotion is not None:
            e = root_emotion
        else:
            e = select_child_ucb(node, c_puct, options, stats.get("bounds"))
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
        leaf_value = node.leaf_value
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
        if "bounds" in stats:  # the tree's smallest and largest Q (min-max transform)
            stats["bounds"] = [torch.minimum(stats["bounds"][0], child.Q), torch.maximum(stats["bounds"][1], child.Q)]


@torch.no_grad()
def literal_search(
    model: Any,
    history: TensorDict,
    num_simulations: int = 50,
    c_puct: float = 1.0,
    max_depth: int = 3,
    stats: dict[str, Any] | None = None,
    q_transform: str = "literal",
    min_spread: float = 0.0,
    gumbel: GumbelSettings | None = None,
) -> Tensor:
    """Spec 1.3 ``MCTS_SEARCH`` for ONE environment; returns the root's visit counts, long ``[n_emotions]``.

    Args:
        model: an :class:`emotion_rl.model.EmotionModel` (``evaluate(history, imagined_observation=None)``), called
            once at the root and once per expansion, each time on the whole real sequence (no cache).
        history: the real sequence ``[T]``: ``observation`` ``[T, obs]``, ``action``, ``emotion`` (long, -1 = none),
            ``reward``; an optional ``mask`` (valid prefix) is honoured by keeping the valid prefix only.
        num_simulations: number of ``SIMULATE`` calls (spec: 50).
        c_puct: exploration coefficient of 1.2.
        max_depth: ``MAX_DEPTH`` of 1.4 (spec: 3); must be at least 1.
        stats: if given, receives ``root`` (the tree), ``root_outputs``, ``model_calls``, ``expanded_depths`` (of
            every expanded node in expansion order, the root's 0 first), ``num_expansions`` (the root not counted),
            ``max_depth_reached``; with ``gumbel``, ``policy_target`` (float64 ``[E]``) and ``selected_emotion``.
        q_transform, min_spread: the Q transform of the UCB score (``EmotionMCTS``'s options).
        gumbel: the Gumbel root's settings and draws (default: the UCB score at the root too).

    ``NORMALIZE`` (1.3) is ``counts / counts.sum()``; the counts are returned so that comparisons are exact.
    """
    history = _checked_history(history, num_simulations, max_depth)
    stats = {} if stats is None else stats
    stats.update(model_calls=0, expanded_depths=[], max_depth_reached=0)
    options = dict(q_transform=q_transform, min_spread=min_spread)

    root = Node()  # 1. Create root node; 2. Expand root node
    outputs = model.evaluate(history.unsqueeze(0))[0]
    stats["model_calls"] += 1
    stats["expanded_depths"].append(0)
    root.P = outputs.get("policy")
    _create_children(root, outputs)
    dtype = root.P.dtype
    stats["bounds"] = [torch.tensor(math.inf, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)]

    # 3. Simulations (the Gumbel root chooses each simulation's root emotion by sequential halving)
    chosen = gumbel_considered(root, gumbel) if gumbel is not None else None
    targets = halving_targets(len(chosen), num_simulations) if gumbel is not None else None
    for k in range(num_simulations):
        first = None if gumbel is None else gumbel_choice(root, gumbel, options, chosen, targets[k])
        simulate(root, history, model, c_puct, max_depth, stats, options, first)

    # 4. Compute visit distribution
    visit_counts = torch.tensor([root.children[e].N for e in sorted(root.children)], dtype=torch.long)
    if gumbel is not None:
        _gumbel_finish(root, gumbel, options, chosen, stats)
    stats.update(root=root, root_outputs=outputs, num_expansions=len(stats["expanded_depths"]) - 1)
    return visit_counts


def _checked_history(history: TensorDict, num_simulations: int, max_depth: int) -> TensorDict:
    """One environment's valid history ``[T]`` (its ``mask``'s prefix), after checking the search's arguments."""
    if history.batch_dims != 1:
        raise ValueError(f"literal_search takes one environment's history [T], got {tuple(history.batch_size)}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if num_simulations < 0:
        raise ValueError(f"num_simulations must be >= 0, got {num_simulations}")
    if "mask" in history.keys():
        history = history[history.get("mask")].exclude("mask")
    return history


def _gumbel_finish(root: Node, gumbel: GumbelSettings, options: dict, chosen: list[int], stats: dict[str, Any]) -> None:
    """The Gumbel root's results into ``stats``: the winner (the best of the most visited considered emotions) as
    ``selected_emotion`` and ``softmax(logits + sigma)`` as ``policy_target``."""
    most = max(root.children[e].N for e in chosen)
    stats["selected_emotion"] = gumbel_choice(root, gumbel, options, chosen, most)
    logits, _, sigma = gumbel_scores(root, gumbel, options)
    z = logits + sigma
    z = np.exp(z - z.max())
    stats["policy_target"] = z / z.sum()
