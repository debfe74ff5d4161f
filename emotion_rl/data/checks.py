"""The data side's argument checks (:class:`~emotion_rl.data.datamodule.EmotionDataModule`): each refusal names the
argument, what it was given and what to give instead, before anything is built."""

from __future__ import annotations

from emotion_rl.data.replay import WINDOW_WEIGHTINGS
from emotion_rl.data.selfplay import Reanalyzer, SelfPlayAgent

__all__ = ["check_agent", "check_batches", "check_context", "check_fraction", "check_int"]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value``, refused unless an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"EmotionDataModule: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_fraction(name: str, value: object, what: str = "a number in [0, 1]") -> float:
    """``value`` as a float, refused unless a number (not a bool) in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"EmotionDataModule: {name} must be {what}, got {value!r}")
    return float(value)


def check_batches(
    reanalyze_fraction: float, context_window: int | None, window_weighting: str, num_envs: int, workers: int
) -> None:
    """Refuse training-batch options that do not go together: reanalyse on windows (it re-searches from step 0), an
    unknown window weighting, envs that do not split evenly over the collector's worker processes."""
    if context_window is not None and reanalyze_fraction:
        raise ValueError(
            "EmotionDataModule: reanalyze_fraction > 0 needs whole episodes (it re-searches every real prefix "
            "from step 0); set context_window: null or reanalyze_fraction: 0"
        )
    if window_weighting not in WINDOW_WEIGHTINGS:
        raise ValueError(
            f"EmotionDataModule: window_weighting must be one of {WINDOW_WEIGHTINGS}, got {window_weighting!r}"
        )
    if workers and num_envs % workers:
        raise ValueError(
            f"EmotionDataModule: num_envs ({num_envs}) must be a multiple of collector_workers ({workers}): each "
            "worker process runs num_envs / collector_workers envs"
        )


def check_agent(agent: object, name: str, gamma: float, reanalyze: bool) -> None:
    """Refuse an agent (called ``name`` in the message) the data side cannot serve: one without
    ``make_policy(greedy)``, one that cannot reanalyse when ``reanalyze`` asks it to, one whose value targets
    discount with another ``gamma`` than the stored returns (its ``hparams["gamma"]``, when it has one)."""
    if not isinstance(agent, SelfPlayAgent):
        raise TypeError(f"EmotionDataModule: {name} ({type(agent).__name__}) has no make_policy(greedy)")
    if reanalyze and not isinstance(agent, Reanalyzer):
        raise TypeError(
            f"EmotionDataModule: reanalyze_fraction > 0 needs an agent with reanalyze(episodes) and device; "
            f"{name} ({type(agent).__name__}) lacks them. Set reanalyze_fraction: 0"
        )
    hparams = getattr(agent, "hparams", None)
    agent_gamma = hparams.get("gamma") if isinstance(hparams, dict) else None
    if agent_gamma is not None and float(agent_gamma) != gamma:
        raise ValueError(
            f"EmotionDataModule: {name} discounts its value targets with gamma={agent_gamma} but the data's "
            f"returns use gamma={gamma}; give both the same gamma (the command line links data.gamma into the model)"
        )


def check_context(keeps: int | None, context_window: int | None, max_episode_steps: int, env_id: str) -> None:
    """Refuse a policy that plans on histories of ``keeps`` steps (``None``: not told) other than the batches hold
    (windows of ``context_window`` steps, or whole episodes of up to ``max_episode_steps``; decision 15)."""
    if keeps is None:
        return
    if context_window is not None and keeps != context_window:
        raise ValueError(
            f"the datamodule trains on windows of context_window={context_window} steps but the policy "
            f"plans on {keeps}; give the agent the same context_window (the CLI links data.context_window into "
            "the model)"
        )
    if context_window is None and keeps < max_episode_steps:
        raise ValueError(
            f"the policy plans on histories of up to {keeps} steps but {env_id}'s episodes last up to "
            f"{max_episode_steps} steps (time limit), and the datamodule trains on whole episodes; give the "
            f"agent max_episode_steps={max_episode_steps} and context_window: null, or set "
            f"data.context_window: {keeps} (windows)"
        )
