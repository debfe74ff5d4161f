"""Why episodes end, where the environment tells it (docs/data.md, "Why episodes end"): terminated or truncated by
the time limit for every environment, and for CartPole which of its limits the final state crossed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import gymnasium
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

__all__ = ["Beyond", "EpisodeEndings", "ending_shares"]

Reason = Callable[[torch.Tensor], bool]
"""Whether an episode that terminated ended for one reason, read from its final observation ``s_T``."""


class Beyond:
    """A reason: ``|s_T[index]| > limit`` (a plain object, so the datamodule that holds it pickles)."""

    def __init__(self, index: int, limit: float) -> None:
        self.index, self.limit = index, limit

    def __call__(self, state: torch.Tensor) -> bool:
        return abs(float(state[self.index])) > self.limit


class EpisodeEndings:
    """Classifies each finished episode: ``terminated`` (it reached a terminal state), ``truncated`` (the time limit
    cut it, and it did not terminate there), and, for a terminated one, each of the environment's own ``reasons``
    (name: a test of the final observation ``s_T``). An episode may meet several reasons; one that terminated may
    meet none (a reason read at the float32 resolution of the stored observation, at its threshold).

    :meth:`for_env` knows gymnasium's CartPole (``cart_position``: ``|x| > x_threshold``, the cart left the track;
    ``pole_angle``: ``|theta| > theta_threshold_radians``, the pole fell; the thresholds read from the env itself,
    so a CartPole made with other ``env_kwargs`` is read with its own). Other environments: terminated and truncated
    only.
    """

    def __init__(self, reasons: Mapping[str, Reason] | None = None) -> None:
        self.reasons = dict(reasons or {})

    @property
    def names(self) -> tuple[str, ...]:
        """Every class an episode is counted in: ``terminated``, ``truncated``, then the env's own reasons."""
        return ("terminated", "truncated", *self.reasons)

    @classmethod
    def for_env(
        cls,
        env_id: str,
        env_kwargs: Mapping | None = None,
        env_wrappers: Sequence[str] = (),
        env_factory: str | None = None,
    ) -> EpisodeEndings:
        """The endings of ``env_id`` made with ``env_kwargs``: CartPole's reasons for a gymnasium CartPole, else
        terminated / truncated only (also for a TorchRL ``env_factory``, and when wrappers may change what the
        observation means)."""
        if env_factory is not None or env_wrappers:
            return cls()
        env = gymnasium.make(env_id, **dict(env_kwargs or {}))
        try:
            unwrapped = env.unwrapped
            if isinstance(unwrapped, CartPoleEnv):
                x_limit, angle_limit = float(unwrapped.x_threshold), float(unwrapped.theta_threshold_radians)
                return cls({"cart_position": Beyond(0, x_limit), "pole_angle": Beyond(2, angle_limit)})
        finally:
            env.close()
        return cls()

    def classify(self, terminated: bool, truncated: bool, final_observation: torch.Tensor) -> dict[str, bool]:
        """The classes of one finished episode (:attr:`names`), from how its last step ended and ``s_T``."""
        ending = {"terminated": bool(terminated), "truncated": bool(truncated) and not terminated}
        for name, reason in self.reasons.items():
            ending[name] = bool(terminated) and reason(final_observation)
        return ending

    def evaluation_shares(self, evaluation: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:func:`ending_shares` of the episodes of an evaluation (``evaluate_policy``'s ``terminated``,
        ``truncated`` ``[n]`` and ``final_observation`` ``[n, obs]``)."""
        flags = zip(evaluation["terminated"].tolist(), evaluation["truncated"].tolist(), strict=True)
        finals = evaluation["final_observation"]
        endings = [self.classify(term, trunc, final) for (term, trunc), final in zip(flags, finals, strict=True)]
        return ending_shares(endings, self.names)


def ending_shares(endings: Sequence[Mapping[str, bool]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The share of ``endings`` in each class of ``names`` (float32 scalars; NaN when no episode finished)."""
    count = len(endings)
    return {
        name: torch.tensor(sum(ending[name] for ending in endings) / count if count else math.nan, dtype=torch.float32)
        for name in names
    }
