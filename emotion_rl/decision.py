"""The greedy decision: how a policy that acts greedily turns a search's result into one action (decision 26 in
docs/decisions.md).

The specification acts through the chosen emotion (spec 5 step 3): the most visited (or the root rule's) emotion,
then its action head's argmax. Where several emotions take the same action, that decision follows whichever of
their value heads over-estimates most, on gaps far below the values' error. ``"action"`` decides per action
instead: each action's value is the mean completed ``Q`` of the root emotions whose head takes it, the best action
is taken, through the searched emotion when that emotion takes it, else through the best-valued emotion that does.
Agents act by ``"emotion"``; ``"action"`` lost its screen as an agent setting and stays as a measurement (the
search-gain rows ``search_by_action`` and ``values``, ``--paired-decision``: docs/results.md, "Stays solved").
"""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from torch import Tensor

__all__ = [
    "GREEDY_DECISIONS",
    "PAIRED_DECISION",
    "GreedyDecision",
    "decide_by_action",
    "pooled_action_values",
    "root_q",
]

GreedyDecision = Literal["emotion", "action"]
GREEDY_DECISIONS: tuple[str, ...] = GreedyDecision.__args__
PAIRED_DECISION = "action"
"""The decision the measurements play beside the agent's own (``"emotion"``): the search-gain rows
``search_by_action`` and ``values``, the protocol's ``--paired-decision`` (docs/results.md, "Stays solved")."""


def root_q(result: TensorDictBase) -> Tensor:
    """The root emotions' values ``[*B, E]`` a decision reads: the search's ``completed_q`` (``Q`` where visited,
    else the child's own ``V^e``), or the root's ``values`` ``V^e`` for a planner that
    does not search (then the decision is greedy in the values alone)."""
    if "completed_q" in result.keys():
        return result.get("completed_q")
    return result.get("values")


def pooled_action_values(q: Tensor, actions: Tensor, n_actions: int) -> Tensor:
    """``[*B, A]``: for each action, the mean of ``q`` ``[*B, E]`` over the emotions whose action ``actions``
    ``[*B, E]`` (long, each emotion's argmax action at the root) is that action; ``-inf`` where no emotion takes it.
    """
    takes = torch.nn.functional.one_hot(actions, n_actions).to(q.dtype)  # [*B, E, A]
    count = takes.sum(-2)
    total = (q.unsqueeze(-1) * takes).sum(-2)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("-inf")))


def decide_by_action(q: Tensor, actions: Tensor, searched: Tensor, n_actions: int) -> tuple[Tensor, Tensor]:
    """``(emotion, action)`` long ``[*B]`` of the ``"action"`` decision: the action of the highest pooled value
    (:func:`pooled_action_values`, ties to the lowest action), acted through the ``searched`` emotion ``[*B]`` when
    its head takes that action, else through the emotion of highest ``q`` among those that take it (ties to the
    lowest index)."""
    action = pooled_action_values(q, actions, n_actions).argmax(-1)
    takes = actions == action.unsqueeze(-1)
    keep = takes.gather(-1, searched.unsqueeze(-1)).squeeze(-1)
    best = q.masked_fill(~takes, float("-inf")).argmax(-1)
    return torch.where(keep, searched, best), action
