"""Reanalyze (as in MuZero): fresh search targets for stored real histories, with the current model."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor

from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel, evaluating

__all__ = ["reanalyze"]


@torch.no_grad()
def reanalyze(planner: EmotionMCTS, model: EmotionModel, episodes: TensorDict, chunk: int = 256) -> Tensor:
    """Fresh MCTS visit distributions ``[B, L, E]`` for the stored episodes ``[B, L]``.

    Step ``t`` of episode ``b`` gets ``planner.search(model, history_b[0..t])["policy_target"]``: the same
    search the policy ran when it acted there (spec 1.3 - 1.6, the real prefix only; nothing imagined is stored).
    Steps beyond an episode's ``mask`` get zeros. All prefixes are searched as one batch, in chunks of ``chunk``
    histories cut to their longest prefix. The histories are searched on the model's device and in its float type
    (the replay stores float32 on the CPU); the result is where the episodes are.
    """
    batch, length = episodes.shape
    mask = episodes["mask"]
    out = torch.zeros(batch, length, model.n_emotions, device=mask.device)
    with evaluating(model) as (device, dtype):
        rows = mask.nonzero().to(device)  # [R, 2]: (episode, step), in step order within each episode
        rows = rows[rows[:, 1].argsort(stable=True)]  # group short prefixes together
        real = episodes.select("observation", "action", "emotion", "reward").to(device)
        real = real.apply(lambda x: x.to(dtype) if x.is_floating_point() else x)
        for start in range(0, rows.shape[0], chunk):
            b, t = rows[start : start + chunk].unbind(-1)
            longest = int(t.max()) + 1
            history = real[b, :longest].clone()
            history.set("mask", torch.arange(longest, device=t.device) <= t.unsqueeze(-1))
            visits = planner.search(model, history)["policy_target"]
            out[b.to(out.device), t.to(out.device)] = visits.to(out.device, out.dtype)
    return out
