"""A planner that remembers what it searched: the one wrapper the evaluations read the search's outputs through."""

from __future__ import annotations

from typing import Any

from tensordict import TensorDictBase

from emotion_rl.history import History

__all__ = ["RecordingPlanner"]


class RecordingPlanner:
    """The planner it wraps, unchanged (same calls, same random draws, so the same actions), keeping the root outputs
    of its last search (``last``) and, with ``keep_all``, every search's ``(history, outputs)`` in call order
    (``searches``: the CPU history the search read, ``[B, T]``, and its result, ``tree`` included when the planner
    returns one). Any other attribute is the planner's (``max_depth``, ``q_transform``, ...).

    Why: the head agreement (:mod:`emotion_rl.evaluation.heads`) reads each emotion's greedy action at the root of
    every acting step, and the depth reading (:mod:`emotion_rl.evaluation.depth`) reads every tree after the episodes.
    """

    def __init__(self, planner: Any, keep_all: bool = False) -> None:  # noqa: ANN401 - any EmotionPolicy planner
        self.planner = planner
        self.keep_all = bool(keep_all)
        self.last: TensorDictBase | None = None
        self.searches: list[tuple[History, TensorDictBase]] = []

    def search(
        self,
        model: Any,  # noqa: ANN401 - an EmotionModel
        history: History,
        generator: Any = None,  # noqa: ANN401 - a torch.Generator or None
        explore: bool = False,
    ) -> TensorDictBase:
        self.last = self.planner.search(model, history, generator=generator, explore=explore)
        if self.keep_all:
            self.searches.append((history.to("cpu"), self.last))
        return self.last

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        if name == "planner":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.planner, name)

    def __repr__(self) -> str:
        return repr(self.planner)
