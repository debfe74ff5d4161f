"""Emotion MCTS (spec 1): the planner, batched over environments.

Each environment runs its own simulations in the spec's order; environments need not be in step. Every round,
each environment not waiting for the model runs one selection (:func:`simulate`); a simulation that ends without
an expansion is backed up at once (:func:`backward`), one that needs an expansion waits, and once most
environments wait one batched model call expands them all (:func:`expand`). The rules a selection applies are
plain functions (``rules.py``); the model is reached through the ``SearchModel`` protocol (``search_model.py``).
The same rounds also run compiled (``mcts/loop.py``, numba), with identical trees, whenever the rules are
deterministic (either root: pUCT or Gumbel); the numpy loop here is the path for random ties and the compiled
loop's reference.
docs/search.md explains the schedule, the root prefetch, the two loops and the cost model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from emotion_rl.config import Configurable
from emotion_rl.history import History
from emotion_rl.mcts.rules import GumbelRoot, Rules, dirichlet_noise, make_rules
from emotion_rl.mcts.search_model import as_search_model
from emotion_rl.mcts.tree import NodeOutputs, SearchModel, Tree
from emotion_rl.model import EmotionModel, check_value_readout

if TYPE_CHECKING:  # numba is imported by the first search only
    from emotion_rl.mcts.loop import KernelRules

__all__ = ["EmotionMCTS"]

WAIT_FRACTION = 0.85
"""The model is called once this fraction of the environments still searching wait for an expansion."""


@dataclass
class Path:
    """One simulation's selection for ``n`` environments: global ``nodes`` and ``emotions`` ``[n, max_depth]``
    (the sink past the leaf), the path length ``depth`` (>= 1), and its last edge ``(parent, emotion)``."""

    nodes: np.ndarray
    emotions: np.ndarray
    depth: np.ndarray
    parent: np.ndarray
    emotion: np.ndarray

    @classmethod
    def empty(cls, batch: int, max_depth: int, sink: int) -> Path:
        nodes = np.full((batch, max_depth), sink, dtype=np.int64)
        zeros = np.zeros(batch, dtype=np.int64)
        return cls(nodes, np.zeros_like(nodes), zeros + 1, zeros + sink, zeros.copy())

    def store(self, rows: np.ndarray, other: Path, which: np.ndarray) -> None:
        """Keep ``other``'s paths ``which`` as the paths of environments ``rows``."""
        for name in ("nodes", "emotions", "depth", "parent", "emotion"):
            getattr(self, name)[rows] = getattr(other, name)[which]


def simulate(
    tree: Tree,
    roots: np.ndarray,
    max_depth: int,
    rules: Rules,
    generator: np.random.Generator | None,
    root_emotion: np.ndarray | None = None,
) -> Path:
    """spec 1.4 selection: descend by the selection rule from each root (or take ``root_emotion`` there) until an
    unexpanded child or ``max_depth``; past its leaf a path walks in the sink, so every path takes ``max_depth``
    steps."""
    n = roots.shape[0]
    nodes = np.empty((n, max_depth), dtype=np.int64)
    emotions = np.empty_like(nodes)
    node = roots
    for d in range(max_depth):
        if d == 0 and root_emotion is not None:
            emotion = root_emotion
        else:
            emotion = rules.select(tree, node, generator)
        nodes[:, d] = node
        emotions[:, d] = emotion
        node = tree.children[node, emotion]
    depth = (nodes != tree.sink).sum(axis=1)
    last = np.arange(n), depth - 1
    return Path(nodes, emotions, depth, nodes[last], emotions[last])


def needs_expansion(tree: Tree, path: Path, max_depth: int) -> np.ndarray:
    """spec 1.4: the leaf child was visited before (``N > 0``) and lies above ``max_depth`` (decision 4)."""
    return (tree.edges.visits_plus_one[path.parent, path.emotion] > 1) & (path.depth < max_depth)


def expand(
    tree: Tree, model: SearchModel, state, observation: np.ndarray, rows: np.ndarray, pending: Path, like: Tensor
) -> np.ndarray:
    """spec 1.4 expansion for environments ``rows``: evaluate each pending leaf child on "real history + its
    predicted state" (spec 1.5), add it to the tree, return its leaf value ``[rows]`` (the mean of its values, or
    ``sum_e pi V^e`` with ``tree.value_readout == "policy"``).

    One model call over every environment: ``observation`` ``[B, obs]`` is a buffer whose other rows keep their
    last state (outputs ignored), so the call needs no gather of the key/value cache.
    """
    parent, emotion = pending.parent[rows], pending.emotion[rows]
    observation[rows] = tree.child_state[parent, emotion]
    outputs = model.expand(state, torch.from_numpy(observation).to(like.device, like.dtype))
    outputs = NodeOutputs.from_model(outputs, tree.c_puct, tree.value_readout).take(rows)
    tree.expand(rows, parent, emotion, pending.depth[rows], outputs)
    return outputs.leaf_value


def prefetch_root(tree: Tree, model: SearchModel, state, like: Tensor) -> NodeOutputs:
    """The expansion outputs of the roots' children ``[B, E, ...]``, in one model call before the simulations.

    An expansion depends on the child's state only, known once the root is expanded; the tree is unchanged (a
    root child still becomes a node when a simulation expands it).
    """
    states = torch.from_numpy(tree.child_state[tree.roots]).to(like.device, like.dtype)  # [B, E, obs]
    return NodeOutputs.from_model(model.children(state, states), tree.c_puct, tree.value_readout)


def backward(tree: Tree, nodes: np.ndarray, emotions: np.ndarray, leaf_value: np.ndarray) -> None:
    """spec 1.4 backpropagation of ``leaf_value`` ``[n]`` along paths ``[n, max_depth]`` (sink steps ignored)."""
    tree.backup(nodes, emotions, leaf_value)


class EmotionMCTS(Configurable):
    """MCTS over emotions (spec 1.3): the root visit distribution of ``num_simulations`` simulations.

    Args:
        num_simulations: simulations per search (spec 5: 50).
        c_puct: exploration coefficient (spec 1.2: 1.0).
        max_depth: MAX_DEPTH of spec 1.4 (3).

    Options beyond the specification (docs/search.md), each off by default:
        q_transform: ``"literal"`` (decision 2), ``"completed"`` (unvisited children get ``completed_value``),
            ``"minmax"`` (Q normalised by the tree's bounds, MuZero) or ``"minmax_completed"``.
        completed_value: ``"child"`` (the child's stored value prediction) or ``"parent"`` (the node's value).
        tie_break: ``"lowest"`` (decision 3) or ``"random"`` (by the search's generator).
        dirichlet_alpha, dirichlet_fraction: root noise ``(1 - f) P + f Dir(alpha)`` when exploring; 0 = off.
        root_rule: ``"puct"`` or ``"gumbel"`` (Gumbel MuZero root: Gumbel-top-k, sequential halving, improved
            policy as ``visit_distribution``, the halving winner as ``selected_emotion``).
        gumbel_considered, gumbel_c_visit, gumbel_c_scale: ``m`` sampled emotions; ``sigma(q) = (c_visit +
            max N) * c_scale * q``.
        value_readout: the value of a node (an expansion's backed-up leaf value, the ``"parent"`` completion):
            ``"mean"`` of its ``E`` values (spec 1.4) or ``"policy"``, ``sum_e pi(e | s) V^e(s)`` with ``pi`` the
            policy head's output at that node (before any root noise).

    Attributes:
        kernel: which simulation loop runs (not a constructor argument, so not an agent hyper-parameter). None
            (default): the compiled one (``mcts/loop.py``) whenever it computes the rules (pUCT, every Q
            transform, the lowest-index tie break; the pUCT or the Gumbel root) and numba imports, else numpy;
            True: the compiled one (an error where it does not apply); False: numpy. Both give the same trees.
    """

    kernel: bool | None = None

    def __init__(
        self,
        num_simulations: int = 50,
        c_puct: float = 1.0,
        max_depth: int = 3,
        q_transform: str = "literal",
        completed_value: str = "child",
        tie_break: str = "lowest",
        dirichlet_alpha: float = 0.3,
        dirichlet_fraction: float = 0.0,
        root_rule: str = "puct",
        gumbel_considered: int = 8,
        gumbel_c_visit: float = 50.0,
        gumbel_c_scale: float = 0.1,
        value_readout: str = "mean",
    ) -> None:
        if num_simulations < 1:
            raise ValueError(f"num_simulations must be >= 1, got {num_simulations}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        if c_puct < 0:
            raise ValueError(f"c_puct must be >= 0, got {c_puct}")
        if dirichlet_alpha <= 0 or not 0.0 <= dirichlet_fraction <= 1.0:
            raise ValueError(
                f"need dirichlet_alpha > 0 and 0 <= dirichlet_fraction <= 1: {dirichlet_alpha}, {dirichlet_fraction}"
            )
        if root_rule not in ("puct", "gumbel"):
            raise ValueError(f"root_rule={root_rule!r} is not supported; choose one of ['puct', 'gumbel']")
        if gumbel_considered < 1 or gumbel_c_visit < 0 or gumbel_c_scale < 0:
            raise ValueError("need gumbel_considered >= 1, gumbel_c_visit >= 0 and gumbel_c_scale >= 0")
        self.num_simulations = num_simulations
        self.c_puct = float(c_puct)
        self.max_depth = max_depth
        self.rules = make_rules(q_transform, completed_value, tie_break)
        self.options = dict(
            q_transform=q_transform,
            completed_value=completed_value,
            tie_break=tie_break,
            dirichlet_alpha=float(dirichlet_alpha),
            dirichlet_fraction=float(dirichlet_fraction),
            root_rule=root_rule,
            gumbel_considered=int(gumbel_considered),
            gumbel_c_visit=float(gumbel_c_visit),
            gumbel_c_scale=float(gumbel_c_scale),
            value_readout=check_value_readout(value_readout),
        )

    def __repr__(self) -> str:
        defaults = EmotionMCTS.__init__.__defaults__[3:]
        changed = [f"{k}={v!r}" for (k, v), d in zip(self.options.items(), defaults, strict=True) if v != d]
        args = [f"num_simulations={self.num_simulations}", f"c_puct={self.c_puct}", f"max_depth={self.max_depth}"]
        return f"EmotionMCTS({', '.join(args + changed)})"

    @torch.no_grad()
    def search(
        self,
        model: EmotionModel | SearchModel,
        history: History | TensorDictBase,
        generator: torch.Generator | None = None,
        explore: bool = False,
    ) -> TensorDict:
        """spec 1.3 MCTS_SEARCH for every history ``[*B, T]`` at once (only read, decision 6).

        ``explore``: acting in training; turns on the configured root noise (Dirichlet, Gumbel), never wanted in
        evaluation or reanalyze. ``generator`` drives every draw (default: the global torch RNG); the literal
        search draws nothing. Returns ``[*B]``: ``visit_counts`` (long ``[*B, E]``), ``visit_distribution``
        (normalised counts; the improved policy with the Gumbel root), the root's model outputs ``prior``,
        ``values``, ``action_logits``, ``dynamics``, the tree arrays under ``tree``, and with the Gumbel root
        ``selected_emotion`` (long ``[*B]``).
        """
        options = self.options
        model = as_search_model(model)
        batch_shape = history.batch_size[:-1]
        root, state = model.root(history)
        tree = Tree.from_root(
            root,
            self.num_simulations + 1,
            self.c_puct,
            track_bounds=self.rules.min_max,
            value_readout=options["value_readout"],
        )
        gumbel = options["root_rule"] == "gumbel"
        noise = explore and options["dirichlet_fraction"] > 0
        rng = self._numpy_generator(generator) if self.rules.random or noise or (gumbel and explore) else None
        if noise:
            alpha, fraction = options["dirichlet_alpha"], options["dirichlet_fraction"]
            tree.set_prior(tree.roots, dirichlet_noise(tree.prior[tree.roots], alpha, fraction, rng))
        root_rule = None
        if gumbel:
            root_rule = GumbelRoot.start(
                tree,
                options["gumbel_considered"],
                self.num_simulations,
                options["completed_value"],
                options["gumbel_c_visit"],
                options["gumbel_c_scale"],
                rng if explore else None,
            )
        # a root child can be expanded only from its second visit on, and only below max_depth
        prefetch = self.max_depth > 1 and self.num_simulations > 1
        root_children = prefetch_root(tree, model, state, root.values) if prefetch else None
        self.run_simulations(tree, model, state, root.values, root_children, rng, root_rule)
        device = root.values.device
        out = tree.to_tensordict(device)
        visit_counts = out["child_visits"][:, 0]
        result = TensorDict(
            visit_counts=visit_counts,
            visit_distribution=visit_counts.to(root.values.dtype) / visit_counts.sum(-1, keepdim=True),
            prior=root.policy,
            values=root.values,
            action_logits=root.action_logits,
            dynamics=root.dynamics,
            tree=out,
            batch_size=root.values.shape[:1],
        )
        if root_rule is not None:
            improved = torch.from_numpy(root_rule.improved_policy(tree))
            result["visit_distribution"] = improved.to(device, root.values.dtype)
            result["selected_emotion"] = torch.from_numpy(root_rule.winner(tree)).to(device)
        return result.reshape(batch_shape)

    @staticmethod
    def _numpy_generator(generator: torch.Generator | None) -> np.random.Generator:
        """The search's numpy generator, seeded by one draw from ``generator`` (the global RNG when None)."""
        device = "cpu" if generator is None else generator.device  # a generator draws on its own device
        return np.random.default_rng(int(torch.randint(2**62, (), generator=generator, device=device)))

    def run_simulations(
        self,
        tree: Tree,
        model: SearchModel,
        state,
        like: Tensor,
        root_children: NodeOutputs | None = None,
        generator: np.random.Generator | None = None,
        root_rule: GumbelRoot | None = None,
    ) -> None:
        """spec 1.3 step 3: ``num_simulations`` simulations per environment, each environment in its own order.

        A root child's expansion uses ``root_children`` when prefetched; any other expansion waits until the
        next batched model call, made once ``WAIT_FRACTION`` of the environments still searching wait.
        ``root_rule`` chooses each simulation's root emotion (the Gumbel root) instead of the selection rule.
        With deterministic rules the rounds run compiled (:attr:`kernel`, ``mcts/loop.py``), the same trees.
        """
        compiled = self._compiled_rules(root_rule)
        if compiled is not None:
            self._run_compiled(tree, model, state, like, root_children, compiled, root_rule)
            return
        batch, max_depth, sink = tree.batch, self.max_depth, tree.sink
        roots = tree.roots
        remaining = np.full(batch, self.num_simulations)
        waiting = np.zeros(batch, dtype=bool)
        pending = Path.empty(batch, max_depth, sink)
        observation = np.zeros((batch, tree.child_state.shape[-1]), dtype=tree.child_state.dtype)
        while True:
            active = np.flatnonzero((remaining > 0) & ~waiting)
            if active.shape[0]:
                simulation = self.num_simulations - remaining[active]
                first = None if root_rule is None else root_rule.select(tree, active, simulation)
                path = simulate(tree, roots[active], max_depth, self.rules, generator, first)
                expanding = needs_expansion(tree, path, max_depth)
                leaf_value = tree.child_value[path.parent, path.emotion]
                if root_children is not None and expanding.any():
                    ready = expanding & (path.depth == 1)  # a root child: its outputs are prefetched
                    if ready.any():
                        rows, emotion = active[ready], path.emotion[ready]
                        outputs = root_children.take(rows, emotion)
                        tree.expand(rows, path.parent[ready], emotion, 1, outputs)
                        leaf_value[ready] = outputs.leaf_value
                        expanding &= ~ready
                if expanding.any():
                    rows = active[expanding]
                    waiting[rows] = True
                    pending.store(rows, path, expanding)
                    nodes = np.where(expanding[:, None], sink, path.nodes)  # backed up after their expansion
                else:
                    nodes = path.nodes
                backward(tree, nodes, path.emotions, leaf_value)
                remaining[active] -= ~expanding
            n_waiting = np.count_nonzero(waiting)
            if n_waiting and n_waiting >= WAIT_FRACTION * np.count_nonzero(remaining):
                rows = np.flatnonzero(waiting)
                leaf_value = expand(tree, model, state, observation, rows, pending, like)
                backward(tree, pending.nodes[rows], pending.emotions[rows], leaf_value)
                remaining[rows] -= 1
                waiting[rows] = False
            elif not active.shape[0]:
                break
        tree.clear_sink()

    def _compiled_rules(self, root_rule: GumbelRoot | None) -> KernelRules | None:
        """The rules in the compiled loop's form when it is to run (see :attr:`kernel`), else None."""
        if self.kernel is False:
            return None
        try:
            from emotion_rl.mcts.loop import kernel_root, kernel_rules
        except ImportError:  # numba missing or broken: the numpy loop computes the same trees
            if self.kernel:
                raise
            return None
        compiled = kernel_rules(self.rules) if kernel_root(root_rule) else None
        if compiled is None and self.kernel:
            raise ValueError(
                "the compiled simulation loop covers pUCT with lowest-index ties below the pUCT or the Gumbel root "
                "(no random ties)"
            )
        return compiled

    def _run_compiled(
        self,
        tree: Tree,
        model: SearchModel,
        state,
        like: Tensor,
        root_children: NodeOutputs | None,
        rules: KernelRules,
        root_rule: GumbelRoot | None = None,
    ) -> None:
        """:meth:`run_simulations` on the compiled kernel (spec 1.2 selection, 1.4 simulation and backup, the
        Gumbel root's choices): it runs the numpy loop's rounds and stops exactly where that loop calls the model,
        with the same batched input."""
        from emotion_rl.mcts.loop import CompiledLoop

        loop = CompiledLoop(tree, self.num_simulations, self.max_depth, rules, root_children, root_rule)
        outputs = None
        while loop.advance(WAIT_FRACTION, outputs):
            observation = torch.from_numpy(loop.observation).to(like.device, like.dtype)
            outputs = NodeOutputs.from_model(model.expand(state, observation), tree.c_puct, tree.value_readout)
