"""Planners that do not search: the policy head's choice, or one emotion throughout (baselines for the search).

Each speaks the planner contract :class:`~emotion_rl.policy.EmotionPolicy` expects (``search(model, history,
generator=None, explore=False) -> TensorDict[*B]`` with ``policy_target``, ``visit_distribution``, ``visit_counts``,
``prior`` and
``action_logits``), so a policy, an agent (``agent.planner = PriorPlanner()``) or an evaluation runs them unchanged.
Each evaluates the model once, at the root (spec 2.1's four outputs at ``h_t``), where the search of spec 1.3 would
start its simulations; no simulation is run, so ``visit_counts`` are all zero.

What they are for: a search earns its cost only if acting on it beats acting on its own prior, and an emotion
only matters if acting through it differs from acting through the others. ``benchmarks/search_gain.py`` plays
these planners next to the configured search on the same start states (docs/benchmarks.md, "Search gain").
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from emotion_rl.history import History

__all__ = ["FixedEmotionPlanner", "PriorPlanner"]


def _root_result(model, history: History | TensorDictBase, visit_distribution_of) -> TensorDict:  # noqa: ANN001
    """The model's outputs at the last valid step of ``history`` as a planner result; ``visit_distribution_of``
    maps the root's policy ``[*B, E]`` to the distribution the policy acts on."""
    out = model.evaluate(history)
    prior = out.get("policy")
    return TensorDict(
        visit_counts=torch.zeros(prior.shape, dtype=torch.long, device=prior.device),
        visit_distribution=visit_distribution_of(prior),
        policy_target=visit_distribution_of(prior),
        prior=prior,
        values=out.get("values"),
        action_logits=out.get("action_logits"),
        batch_size=out.batch_size,
        device=out.device,
    )


class PriorPlanner:
    """No search: the policy head's distribution at the root is the distribution acted on (spec 5 steps 1-3
    without the search of spec 1.3).

    ``visit_distribution`` is the prior itself, so a greedy :class:`~emotion_rl.policy.EmotionPolicy` acts with the
    prior's argmax emotion (ties to the lowest index) and that emotion's argmax action; with a temperature it
    draws the emotion from ``prior ** (1 / T)``. As a training planner its policy targets equal the policy head's
    own output, so phase 4 has nothing to learn from them: it is a baseline, not a learning rule.
    """

    def search(
        self,
        model,  # noqa: ANN001 - an EmotionModel (anything with evaluate(history) -> policy, values, action_logits)
        history: History | TensorDictBase,
        generator: torch.Generator | None = None,
        explore: bool = False,
    ) -> TensorDict:
        """The root's outputs ``[*B]`` with ``visit_distribution = prior``; ``generator`` and ``explore`` are
        accepted for the contract and unused (nothing is drawn here)."""
        return _root_result(model, history, lambda prior: prior.clone())

    def __repr__(self) -> str:
        return "PriorPlanner()"


class FixedEmotionPlanner:
    """Always emotion ``emotion``: a one-hot ``visit_distribution`` on it, so the policy acts through that
    emotion's action head at every temperature (spec 5 step 3 with the emotion fixed instead of searched).

    Args:
        emotion: the emotion index, ``0 <= emotion < E`` (checked against the model's ``E`` at each search).
    """

    def __init__(self, emotion: int) -> None:
        if isinstance(emotion, bool) or not isinstance(emotion, int) or emotion < 0:
            raise ValueError(f"FixedEmotionPlanner: emotion must be an integer >= 0, got {emotion!r}")
        self.emotion = emotion

    def search(
        self,
        model,  # noqa: ANN001 - an EmotionModel (anything with evaluate(history) -> policy, values, action_logits)
        history: History | TensorDictBase,
        generator: torch.Generator | None = None,
        explore: bool = False,
    ) -> TensorDict:
        """The root's outputs ``[*B]`` with all of ``visit_distribution`` on :attr:`emotion`; ``generator`` and
        ``explore`` are unused."""

        def one_hot(prior: torch.Tensor) -> torch.Tensor:
            n_emotions = prior.shape[-1]
            if self.emotion >= n_emotions:
                raise ValueError(f"FixedEmotionPlanner: emotion {self.emotion} >= the model's {n_emotions} emotions")
            dist = torch.zeros_like(prior)
            dist[..., self.emotion] = 1.0
            return dist

        return _root_result(model, history, one_hot)

    def __repr__(self) -> str:
        return f"FixedEmotionPlanner({self.emotion})"
