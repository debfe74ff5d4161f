"""The real history the model reads, and the stored episode steps it comes from (spec 1.3, 1.5, 3.1, 3.3).

Layout (docs/algorithm.md, "Sequence layout"): entry ``i`` holds ``(s_i, a_i, e_i, r_i)``, where ``r_i`` is the
reward of the step that took ``a_i``. The model reads entry ``i`` as the token ``(a_{i-1}, e_{i-1}, r_{i-1}, s_i)``,
so ``h_t`` never sees the action taken at ``s_t``. :data:`NONE` in an action or emotion field means "none": the
first step's missing predecessor, and the dummy of an appended imagined state (spec 1.5).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase, tensorclass
from torch import Tensor

__all__ = ["EPISODE_KEYS", "HISTORY_KEYS", "NONE", "History", "last_index", "window_index", "windowed_history"]

NONE = -1
"""An action or emotion field that holds nothing (the first step's predecessor, an imagined state's dummies)."""

HISTORY_KEYS = ("observation", "action", "emotion", "reward")
"""The fields of a real history entry ``(s_i, a_i, e_i, r_i)``."""

EPISODE_KEYS = (
    *HISTORY_KEYS,
    "next_observation",
    "done",
    "terminated",
    "truncated",
    "policy_target",
    "novelty",
    "bootstrap",
    "return",
    "mask",
)
"""Keys of a stored step and of a training batch ``[B, L]`` (right-padded, ``mask`` True on valid steps):
the history entry, then ``next_observation`` ``s_{t+1}`` (phase 1's target), ``done`` (True at the episode's last
step; ``terminated | truncated``), ``terminated`` (the episode ended in a terminal state: no value after it) and
``truncated`` (cut by the time limit: the state after it still has a value), bool ``[L]`` each,
``policy_target`` ``[E]`` (the search's target, spec 3.3: what phase 4 learns; the visit distribution under the
pUCT root, the improved policy under the Gumbel root), ``novelty`` (the novelty bonus of the step, in reward units,
0 unless ``novelty_weight`` is set: every value target adds it to the reward; docs/data.md, "Novelty"),
``bootstrap`` (in reward units: ``gamma^(T - t) V(s_T)`` in an episode of ``T`` steps cut by the time limit, the
model's value of the state after its last step when it was stored; 0 after a termination: what a Monte Carlo target
that sees the time limit adds) and ``return`` (spec 2.2.2: phase 3's target, literal: it stops at the episode's
end; the discounted sum of reward plus novelty)."""


@tensorclass
class History:
    """Real histories ``[*B, T]``: ``observation`` ``[*B, T, obs]``, ``action`` and ``emotion`` long ``[*B, T]``
    (:data:`NONE` where not taken yet), ``reward`` ``[*B, T]``, optional ``mask`` bool ``[*B, T]`` (a valid prefix;
    ``None``: every entry is valid). The last valid entry's action, emotion and reward are never read."""

    observation: Tensor
    action: Tensor
    emotion: Tensor
    reward: Tensor
    mask: Tensor | None = None

    @classmethod
    def empty(
        cls, batch: int, length: int, obs_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str
    ) -> History:
        """``[batch, length]`` histories of nothing: zero observations and rewards, :data:`NONE` actions/emotions."""
        return cls(
            observation=torch.zeros((batch, length, *obs_shape), dtype=dtype, device=device),
            action=torch.full((batch, length), NONE, dtype=torch.long, device=device),
            emotion=torch.full((batch, length), NONE, dtype=torch.long, device=device),
            reward=torch.zeros((batch, length), dtype=dtype, device=device),
            batch_size=[batch, length],
            device=device,
        )

    @classmethod
    def of(cls, data: TensorDictBase) -> History:
        """The history fields (and ``mask``, when present) of any TensorDict ``[*B, T]``, e.g. a training batch."""
        mask = data.get("mask") if "mask" in data.keys() else None
        fields = {key: data.get(key) for key in HISTORY_KEYS}
        return cls(**fields, mask=mask, batch_size=data.batch_size, device=data.device)

    def lengths(self) -> Tensor:
        """Valid entries per history, long ``[*B]``."""
        if self.mask is None:
            return torch.full(self.batch_size[:-1], self.batch_size[-1], dtype=torch.long, device=self.action.device)
        return self.mask.long().sum(-1)


def window_index(end: Tensor, window: int, length: int) -> tuple[Tensor, Tensor]:
    """Steps of the windows of ``window`` real steps that end at ``end`` ``[N]``: ``max(0, t - window + 1) .. t``,
    left-aligned. Returns ``index`` ``[N, window]`` (clamped to ``length - 1`` past the end, for gathering) and
    ``valid`` ``[N, window]``: the history a policy with ``context_window=window`` planned on at step ``t``."""
    index = (end - window + 1).clamp(min=0).unsqueeze(-1) + torch.arange(window, device=end.device)
    valid = index <= end.unsqueeze(-1)
    return index.clamp(max=length - 1), valid


def last_index(mask: Tensor) -> Tensor:
    """Each row's last valid index, long ``[*B]``, of a valid-prefix ``mask`` ``[*B, L]``: its length minus one,
    0 for an empty row (whose entry 0 is padding). Where an episode or a window ends: its last real step."""
    return (mask.long().sum(-1) - 1).clamp(min=0)


def windowed_history(steps: TensorDictBase, end: Tensor, window: int) -> TensorDict:
    """The real history a policy with ``context_window=window`` planned on at step ``end[n]`` of row ``n`` of
    ``steps`` ``[N, L]`` (decision 15): its last ``window`` real steps ``max(0, t - window + 1) .. t``
    (:func:`window_index`), left-aligned, as a TensorDict ``[N, window]`` of :data:`HISTORY_KEYS` and ``mask``
    (False past ``t`` in a window that starts at step 0). ``window`` at most ``L``."""
    index, valid = window_index(end, window, steps.batch_size[-1])
    rows = torch.arange(steps.batch_size[0], device=index.device).unsqueeze(-1)
    history = steps.select(*HISTORY_KEYS)[rows, index]
    history.set("mask", valid)
    return history
