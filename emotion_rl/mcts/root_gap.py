"""The margin of a search's decision: how far its best root child is ahead, in value units (docs/training.md,
"Diagnostics"; measured on a trained model in docs/results.md, "How far the search sees").

The root compares its children by their completed ``Q``. When the best child leads by less than the values' own
error, the decision is taken on noise; the Gumbel root's ``sigma`` rescales any lead, however small, to its whole
scale. Read only: nothing here changes a search.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor

__all__ = ["ROOT_GAP_KEYS", "completed_root_q", "root_q_gaps"]

ROOT_GAP_KEYS = ("root_q_gap", "root_action_gap")
"""The keys under which :class:`~emotion_rl.policy.EmotionPolicy` writes :func:`root_q_gaps` per state, and the
self-play stream hands them to the learner's diagnostics."""


def completed_root_q(tree: TensorDictBase) -> Tensor:
    """The root children's completed ``Q`` ``[*B, E]`` read back from a ``tree`` ``[*B]`` in the layout
    :meth:`~emotion_rl.EmotionMCTS.search` returns under ``tree``: ``W / N`` where visited, else the child's stored
    ``V^e``.

    A search returns these numbers itself, as ``completed_q`` (``rules.completed_q``, the root rule's own reading);
    read that. This reader stays for trees that come without it (a reference search's) and equals it bit for bit
    on a search's tree (tests/test_root_gap.py)."""
    visits = tree["child_visits"][..., 0, :]
    value_sum = tree["child_value_sum"][..., 0, :]
    q = value_sum / visits.clamp_min(1).to(value_sum.dtype)
    return torch.where(visits > 0, q, tree["child_value"][..., 0, :])


def root_q_gaps(q: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """``(gap, action_gap)`` ``[*B]`` from the root children's completed ``Q`` ``[*B, E]`` (a search's ``completed_q``)
    and each emotion's action at the root ``[*B, E]`` (its action head's argmax).

    ``gap``: the best ``Q`` minus the second best. ``action_gap``: the best ``Q`` (first maximum) minus the best
    ``Q`` among the emotions whose action differs from the best one's, the margin that decides the action; where
    emotions share actions (the assigned heads: ``e mod A``) the best and second best often take the same one. NaN
    where there is no second emotion, or no other action.
    """
    nan = torch.full(q.shape[:-1], float("nan"), dtype=q.dtype, device=q.device)
    if q.shape[-1] < 2:
        return nan, nan.clone()
    top = q.topk(2, dim=-1).values
    best = q.argmax(-1, keepdim=True)
    same = actions == actions.gather(-1, best)
    other = q.masked_fill(same, float("-inf")).amax(-1)
    action_gap = torch.where(same.all(-1), nan, q.gather(-1, best).squeeze(-1) - other)
    return top[..., 0] - top[..., 1], action_gap
