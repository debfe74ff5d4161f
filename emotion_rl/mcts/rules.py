"""The search's rules as plain functions the planner is given (as mctx's policies take a ``qtransform``).

A selection step at nodes ``node`` reads their edges (:meth:`EdgeArrays.at`), turns ``Q`` into the values the
score uses (a *Q transform*), scores every emotion (the *selection rule*) and picks the best (a *tie break*).
The literal ones (spec 1.2 with decisions 1-3) are the defaults and give the reference's scores bit for bit; the
others are options beyond the specification (docs/search.md). Also here: root noise and the Gumbel root.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emotion_rl.mcts.tree import EdgeArrays, Tree

QTransform = Callable[[Tree, EdgeArrays, np.ndarray], np.ndarray]
"""``(tree, edges at the nodes, nodes) -> [n, E]`` values the selection rule reads as ``Q``."""
SelectionRule = Callable[[np.ndarray, EdgeArrays], np.ndarray]
"""``(transformed Q [n, E], edges at the nodes) -> scores [n, E]``."""
TieBreak = Callable[[np.ndarray, np.random.Generator | None], np.ndarray]
"""``(scores [n, E], the search's generator) -> chosen emotion [n]``."""


# ---------------------------------------------------------------------------------------------- Q transforms
def literal_q(tree: Tree, edges: EdgeArrays, node: np.ndarray) -> np.ndarray:
    """``Q(n, e) = W / N``, and 0 while ``N(n, e) = 0`` (decision 2)."""
    return edges.q


def completion(tree: Tree, node: np.ndarray, by: str) -> np.ndarray:
    """The value an unvisited child of each node gets, ``[n, E]``: ``"child"``, its own stored prediction
    ``V^e`` (spec 1.3); ``"parent"``, the node's value (its leaf value, the mean of its ``E`` values)."""
    if by == "child":
        return tree.child_value[node]
    return np.broadcast_to(tree.node_value[node][:, None], tree.child_value[node].shape)


@dataclass(frozen=True)
class completed_q:  # noqa: N801 - a Q transform, named like the functions it stands beside
    """``Q`` where visited, :func:`completion` where not (instead of decision 2's 0). A class, not a closure, so a
    planner pickles (worker processes of a ``MultiCollector``)."""

    by: str = "child"

    def __call__(self, tree: Tree, edges: EdgeArrays, node: np.ndarray) -> np.ndarray:
        return np.where(edges.visits_plus_one > 1, edges.q, completion(tree, node, self.by))


@dataclass(frozen=True)
class min_max:  # noqa: N801 - a Q transform, named like the functions it stands beside
    """``inner``'s values normalised to ``[0, 1]`` by the smallest and largest ``Q`` backed up so far in the
    node's tree (MuZero), clipped; all 0 until two different ``Q`` were seen, so the rule is invariant to any
    increasing affine change of the values. Unvisited children read 0 under :func:`literal_q`."""

    inner: QTransform

    def __call__(self, tree: Tree, edges: EdgeArrays, node: np.ndarray) -> np.ndarray:
        q = self.inner(tree, edges, node)
        env = tree.environment(node)
        low, high = tree.q_low[env][:, None], tree.q_high[env][:, None]
        spread = high - low
        known = spread > 0
        scaled = np.where(known, np.clip((q - low) / np.where(known, spread, 1.0), 0.0, 1.0), 0.0)
        return np.where(edges.visits_plus_one > 1, scaled, 0.0) if self.inner is literal_q else scaled


# ---------------------------------------------------------------------------------------------- scores and ties
def puct(q: np.ndarray, edges: EdgeArrays) -> np.ndarray:
    """spec 1.2: ``Q(n, e) + c_puct * P(n, e) * sqrt(max(N(n), 1)) / (1 + N(n, e))`` (decision 1).

    The reference's operations in its order and float type, so the scores are its scores bit for bit: the
    numerator is one stored product, kept up to date by :meth:`Tree.backup`.
    """
    return q + edges.explore / edges.visits_plus_one


def lowest_index(scores: np.ndarray, generator: np.random.Generator | None = None) -> np.ndarray:
    """The first maximum: ties go to the lowest emotion index (decision 3)."""
    return scores.argmax(axis=-1)


def random_tie(scores: np.ndarray, generator: np.random.Generator | None) -> np.ndarray:
    """A maximum drawn uniformly among the tied ones, by the search's generator."""
    tied = scores == scores.max(axis=-1, keepdims=True)
    return np.where(tied, generator.random(scores.shape), -1.0).argmax(axis=-1)


@dataclass(frozen=True)
class Rules:
    """The rules of one search: how ``Q`` is read, how emotions are scored, how ties are broken."""

    q_transform: QTransform = literal_q
    selection: SelectionRule = puct
    tie_break: TieBreak = lowest_index
    random: bool = False  # True when a rule draws from the generator
    min_max: bool = False  # True when the tree must track the bounds of Q (Tree.q_low, Tree.q_high)

    def select(self, tree: Tree, node: np.ndarray, generator: np.random.Generator | None) -> np.ndarray:
        """spec 1.2 ``SELECT_CHILD``: one emotion per node of ``node`` ``[n]``."""
        edges = tree.edges.at(node)
        return self.tie_break(self.selection(self.q_transform(tree, edges, node), edges), generator)


Q_TRANSFORMS = ("literal", "completed", "minmax", "minmax_completed")
COMPLETIONS = ("child", "parent")
TIE_BREAKS = ("lowest", "random")


def make_rules(q_transform: str = "literal", completed_value: str = "child", tie_break: str = "lowest") -> Rules:
    """The :class:`Rules` named by configuration strings (the literal ones by default)."""
    for name, value, allowed in (
        ("q_transform", q_transform, Q_TRANSFORMS),
        ("completed_value", completed_value, COMPLETIONS),
        ("tie_break", tie_break, TIE_BREAKS),
    ):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")
    transform = completed_q(completed_value) if q_transform.endswith("completed") else literal_q
    if q_transform.startswith("minmax"):
        transform = min_max(transform)
    random = tie_break == "random"
    tie = random_tie if random else lowest_index
    return Rules(transform, puct, tie, random=random, min_max=q_transform.startswith("minmax"))


# ---------------------------------------------------------------------------------------------- the root
def dirichlet_noise(prior: np.ndarray, alpha: float, fraction: float, generator: np.random.Generator) -> np.ndarray:
    """AlphaZero's root exploration: ``(1 - fraction) * P + fraction * Dirichlet(alpha)`` per row of ``[n, E]``."""
    noise = generator.dirichlet(np.full(prior.shape[-1], alpha), size=prior.shape[0])
    return ((1.0 - fraction) * prior + fraction * noise).astype(prior.dtype)


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
    return np.array(targets[:num_simulations])


@dataclass
class GumbelRoot:
    """The Gumbel MuZero root (Danihelka et al. 2022): sample ``m`` emotions without replacement by Gumbel-top-k
    on the prior's logits, share the simulations among them by sequential halving, and improve the policy with
    the completed ``Q``. ``gumbel`` is zero when not exploring (a deterministic search)."""

    gumbel: np.ndarray  # [B, E]
    logits: np.ndarray  # [B, E] log prior at the root
    considered: np.ndarray  # [B, E] bool: the m sampled emotions
    schedule: np.ndarray  # [num_simulations]
    completed_value: str
    c_visit: float
    c_scale: float

    @classmethod
    def start(
        cls,
        tree: Tree,
        considered: int,
        num_simulations: int,
        completed_value: str,
        c_visit: float,
        c_scale: float,
        generator: np.random.Generator | None,
    ) -> GumbelRoot:
        prior = tree.prior[tree.roots]
        with np.errstate(divide="ignore"):
            logits = np.log(prior)
        gumbel = np.zeros_like(prior) if generator is None else generator.gumbel(size=prior.shape).astype(prior.dtype)
        m = min(considered, prior.shape[-1])
        top = np.argsort(-(gumbel + logits), axis=-1, kind="stable")[:, :m]
        mask = np.zeros(prior.shape, dtype=bool)
        np.put_along_axis(mask, top, True, axis=-1)
        return cls(gumbel, logits, mask, halving_schedule(m, num_simulations), completed_value, c_visit, c_scale)

    def sigma(self, tree: Tree, rows: np.ndarray) -> np.ndarray:
        """``(c_visit + max_b N(b)) * c_scale * q`` with ``q`` the completed ``Q`` of the root's children,
        rescaled to ``[0, 1]`` by its own min and max, ``[n, E]``."""
        root = tree.roots[rows]
        edges = tree.edges.at(root)
        q = np.where(edges.visits_plus_one > 1, edges.q, completion(tree, root, self.completed_value))
        low, high = q.min(axis=-1, keepdims=True), q.max(axis=-1, keepdims=True)
        q = (q - low) / np.maximum(high - low, np.finfo(q.dtype).tiny)
        max_visits = edges.visits.max(axis=-1, keepdims=True)
        return (self.c_visit + max_visits) * self.c_scale * q

    def _best(self, tree: Tree, rows: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Among the considered children whose visit count is ``target`` ``[n]``, the best by ``g + logits +
        sigma(q)``."""
        score = self.gumbel[rows] + self.logits[rows] + self.sigma(tree, rows)
        eligible = self.considered[rows] & (tree.edges.at(tree.roots[rows]).visits == target[:, None])
        return np.where(eligible, score, -np.inf).argmax(axis=-1)

    def select(self, tree: Tree, rows: np.ndarray, simulation: np.ndarray) -> np.ndarray:
        """The root emotion of simulation ``simulation[n]`` of environment ``rows[n]``."""
        return self._best(tree, rows, self.schedule[simulation])

    def winner(self, tree: Tree) -> np.ndarray:
        """The emotion to act with ``[B]``: the best of the most visited considered children."""
        rows = np.arange(tree.batch)
        visits = np.where(self.considered, tree.edges.at(tree.roots).visits, -1)
        return self._best(tree, rows, visits.max(axis=-1))

    def improved_policy(self, tree: Tree) -> np.ndarray:
        """``softmax(logits + sigma(completed Q))`` ``[B, E]``: the search's policy target."""
        z = self.logits + self.sigma(tree, np.arange(tree.batch))
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)
