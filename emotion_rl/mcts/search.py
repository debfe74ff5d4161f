"""Emotion MCTS (spec 1): the planner, batched over environments.

A search evaluates the real histories once (the roots, spec 1.3 step 2), lets its root rule start (``rules.py``),
evaluates the roots' children in one model call, runs the simulations (``loop.py``: selection, expansion, backup),
and asks the root rule for the policy target and the acting emotion. The tree is a few arrays (``tree.py``); the
model is reached through the ``SearchModel`` protocol (``search_model.py``). docs/search.md reads it in that order.
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from emotion_rl.config import Configurable
from emotion_rl.history import History
from emotion_rl.mcts.loop import WAIT_FRACTION, Selection, run_simulations
from emotion_rl.mcts.rules import PUCTRoot, RootRule, completed_q
from emotion_rl.mcts.search_model import as_search_model
from emotion_rl.mcts.tree import NodeOutputs, SearchModel, Tree, numpy_dtype
from emotion_rl.model import EmotionModel

__all__ = ["Q_TRANSFORMS", "EmotionMCTS"]

Q_TRANSFORMS = ("literal", "completed", "minmax", "minmax_completed")


class EmotionMCTS(Configurable):
    """MCTS over emotions (spec 1.3): ``num_simulations`` simulations from each real history, then the root rule's
    policy target and acting emotion.

    Args:
        num_simulations: simulations per search (spec 5: 50).
        c_puct: exploration coefficient of the pUCT score (spec 1.2: 1.0).
        max_depth: MAX_DEPTH of spec 1.4 (3).
        q_transform: the ``Q`` the pUCT score reads (docs/search.md, "Q transforms"): ``"literal"`` (0 while
            unvisited, decision 2), ``"completed"`` (unvisited children read their own predicted ``V^e``, as they
            do in the Gumbel root's ``sigma``), ``"minmax"`` (Q normalised to [0, 1] by the tree's bounds, MuZero)
            or ``"minmax_completed"`` (both).
        min_spread: the smallest spread of ``Q`` any normalisation divides by (the min-max bounds, the Gumbel
            root's ``sigma``); 0: the literal normalisation, which turns any gap between two values into the
            whole scale (beyond the specification; docs/search.md).
        root_rule: the root (:class:`~emotion_rl.mcts.rules.RootRule`): :class:`~emotion_rl.mcts.rules.PUCTRoot`
            (default, spec 1.2) or :class:`~emotion_rl.mcts.rules.GumbelRoot`.
    """

    def __init__(
        self,
        num_simulations: int = 50,
        c_puct: float = 1.0,
        max_depth: int = 3,
        q_transform: str = "literal",
        min_spread: float = 0.0,
        root_rule: RootRule | None = None,
    ) -> None:
        if num_simulations < 1:
            raise ValueError(f"num_simulations must be >= 1, got {num_simulations}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        if c_puct < 0:
            raise ValueError(f"c_puct must be >= 0, got {c_puct}")
        if q_transform not in Q_TRANSFORMS:
            raise ValueError(f"q_transform={q_transform!r} is not supported; choose one of {list(Q_TRANSFORMS)}")
        if not min_spread >= 0:
            raise ValueError(f"min_spread must be >= 0, got {min_spread}")
        root_rule = PUCTRoot() if root_rule is None else root_rule
        if not isinstance(root_rule, RootRule):
            raise ValueError(f"root_rule must be a RootRule (e.g. PUCTRoot(), GumbelRoot()), got {root_rule!r}")
        self.num_simulations, self.c_puct, self.max_depth = int(num_simulations), float(c_puct), int(max_depth)
        self.q_transform, self.min_spread = q_transform, float(min_spread)
        self.root_rule = root_rule

    def replace(self, **changes: object) -> EmotionMCTS:
        """The same search with ``changes`` to its arguments (``planner.replace(num_simulations=200)``)."""
        return type(self)(**{**self.init_args(), **changes})

    def selection(self, dtype: np.dtype) -> Selection:
        """The Q transform as the loop reads it, in the tree's float type ``dtype``."""
        return Selection(
            completed=self.q_transform.endswith("completed"),
            minmax=self.q_transform.startswith("minmax"),
            min_spread=dtype.type(self.min_spread),
            one=dtype.type(1),
        )

    @torch.no_grad()
    def search(
        self,
        model: EmotionModel | SearchModel,
        history: History | TensorDictBase,
        generator: torch.Generator | None = None,
        explore: bool = False,
    ) -> TensorDict:
        """spec 1.3 MCTS_SEARCH for every history ``[*B, T]`` at once (only read, decision 6).

        ``explore``: acting in training; lets the root rule draw (the Gumbel variables), never wanted in
        evaluation or reanalyze. ``generator`` drives every draw (default: the global torch RNG); a search that
        does not explore draws nothing. Returns ``[*B]``: ``visit_counts`` (long ``[*B, E]``),
        ``visit_distribution`` (the normalised counts), ``policy_target`` (the root rule's policy target: the
        visit distribution under pUCT, the improved policy under the Gumbel root), ``completed_q`` (``[*B, E]``,
        the root children's completed ``Q`` in the tree's float type, their own ``V^e`` filling the unvisited,
        as the root rule reads it: ``rules.completed_q``), the root's model outputs
        ``prior`` (as the model gave it), ``values``, ``action_logits``, ``dynamics``, the tree arrays under
        ``tree``, and ``selected_emotion`` (long ``[*B]``) when the root rule chooses the acting emotion.
        """
        model = as_search_model(model)
        batch_shape = history.batch_size[:-1]
        root, cache = model.root(history)
        dtype = numpy_dtype(root.values.dtype)
        tree = Tree.from_root(NodeOutputs.from_model(root, self.c_puct, dtype), self.num_simulations + 1, self.c_puct)
        draw = (lambda: numpy_generator(generator)) if explore else None
        state = self.root_rule.start(tree, self.num_simulations, draw)
        selection = self.selection(dtype)
        # a root child can be expanded only from its second visit on, and only below max_depth
        prefetch = self.max_depth > 1 and self.num_simulations > 1
        root_children = prefetch_root(tree, model, cache, root.values) if prefetch else None
        run_simulations(
            tree, model, cache, root.values, selection, self.root_rule.select, state, self.num_simulations,
            self.max_depth, root_children, WAIT_FRACTION,
        )  # fmt: skip
        decision = self.root_rule.finish(tree, selection, state)
        device, float_type = root.values.device, root.values.dtype
        out = tree.to_tensordict(device)
        visit_counts = out["child_visits"][:, 0]
        result = TensorDict(
            visit_counts=visit_counts,
            visit_distribution=visit_counts.to(float_type) / visit_counts.sum(-1, keepdim=True),
            policy_target=torch.from_numpy(decision.policy).to(device, float_type),
            completed_q=torch.from_numpy(completed_q(tree, selection)).to(device),
            prior=root.policy,
            values=root.values,
            action_logits=root.action_logits,
            dynamics=root.dynamics,
            tree=out,
            batch_size=root.values.shape[:1],
        )
        if decision.emotion is not None:
            result["selected_emotion"] = torch.from_numpy(decision.emotion).to(device)
        return result.reshape(batch_shape)


def prefetch_root(tree: Tree, model: SearchModel, cache: object, like: torch.Tensor) -> NodeOutputs:
    """The expansion outputs of the roots' children ``[B, E, ...]``, in one model call before the simulations (an
    expansion depends on the child's state only, known once the root is expanded; the tree is unchanged: a root
    child still becomes a node when a simulation expands it)."""
    states = torch.from_numpy(tree.child_state[tree.roots]).to(like.device, like.dtype)  # [B, E, obs]
    return NodeOutputs.from_model(model.children(cache, states), tree.c_puct, tree.prior.dtype)


def numpy_generator(generator: torch.Generator | None) -> np.random.Generator:
    """The search's numpy generator, seeded by one draw from ``generator`` (the global RNG when None)."""
    device = "cpu" if generator is None else generator.device  # a generator draws on its own device
    return np.random.default_rng(int(torch.randint(2**62, (), generator=generator, device=device)))
