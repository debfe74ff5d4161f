"""The search's rules as plain functions the planner is given (as mctx's policies take a ``qtransform``).

A selection step at nodes ``node`` reads their edges (:meth:`EdgeArrays.at`), turns ``Q`` into the values the
score uses (a *Q transform*), scores every emotion (the *selection rule*) and picks the best (a *tie break*).
The literal ones (spec 1.2 with decisions 1-3) are the defaults and give the reference's scores bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emotion_rl.tree import EdgeArrays, Tree

QTransform = Callable[[Tree, EdgeArrays, np.ndarray], np.ndarray]
"""``(tree, edges at the nodes, nodes) -> [n, E]`` values the selection rule reads as ``Q``."""
SelectionRule = Callable[[np.ndarray, EdgeArrays], np.ndarray]
"""``(transformed Q [n, E], edges at the nodes) -> scores [n, E]``."""
TieBreak = Callable[[np.ndarray, np.random.Generator | None], np.ndarray]
"""``(scores [n, E], the search's generator) -> chosen emotion [n]``."""


def literal_q(tree: Tree, edges: EdgeArrays, node: np.ndarray) -> np.ndarray:
    """``Q(n, e) = W / N``, and 0 while ``N(n, e) = 0`` (decision 2)."""
    return edges.q


def puct(q: np.ndarray, edges: EdgeArrays) -> np.ndarray:
    """spec 1.2: ``Q(n, e) + c_puct * P(n, e) * sqrt(max(N(n), 1)) / (1 + N(n, e))`` (decision 1).

    The reference's operations in its order and float type, so the scores are its scores bit for bit: the
    numerator is one stored product, kept up to date by :meth:`Tree.backup`.
    """
    return q + edges.explore / edges.visits_plus_one


def lowest_index(scores: np.ndarray, generator: np.random.Generator | None = None) -> np.ndarray:
    """The first maximum: ties go to the lowest emotion index (decision 3)."""
    return scores.argmax(axis=-1)


@dataclass(frozen=True)
class Rules:
    """The rules of one search: how ``Q`` is read, how emotions are scored, how ties are broken."""

    q_transform: QTransform = literal_q
    selection: SelectionRule = puct
    tie_break: TieBreak = lowest_index
    random: bool = False  # True when a rule draws from the generator

    def select(self, tree: Tree, node: np.ndarray, generator: np.random.Generator | None) -> np.ndarray:
        """spec 1.2 ``SELECT_CHILD``: one emotion per node of ``node`` ``[n]``."""
        edges = tree.edges.at(node)
        return self.tie_break(self.selection(self.q_transform(tree, edges, node), edges), generator)


Q_TRANSFORMS: dict[str, QTransform] = {"literal": literal_q}
TIE_BREAKS: dict[str, TieBreak] = {"lowest": lowest_index}
