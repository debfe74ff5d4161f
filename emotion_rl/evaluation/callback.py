"""``EvalCallback``: the protocol's evaluations during a Lightning fit (docs/benchmarks.md, "The protocol").

The datamodule plays the greedy evaluation episodes (Lightning's validation: ``val_episodes`` envs seeded by
``seed + 10_000``, the same start states every time, why each episode ended as ``val/end_*``); this callback
schedules them every ``eval_every`` env steps, records the curve, keeps the best weights, stops at an env-step
budget or a threshold, writes the curve, and scores it (:mod:`emotion_rl.evaluation.protocol`). Like
stable-baselines3's ``EvalCallback`` with ``StopTrainingOnRewardThreshold``, over env steps rather than calls.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from emotion_rl.decision import PAIRED_DECISION
from emotion_rl.evaluation.protocol import first_reached, held, last_third_mean

__all__ = ["EvalCallback"]


class EvalCallback(Callback):
    """Greedy evaluations every ``eval_every`` env steps, recorded in ``curve`` (one point per evaluation:
    ``env_steps``, ``return_mean``, the ``end_*`` shares, with ``paired_decision`` ``return_mean_by_<other>`` on the
    same network and start states, ``wall_s``: training wall time so far, evaluations excluded, and
    ``wall_with_evals_s``).

    Args:
        eval_every: env steps between evaluations (sets ``trainer.val_check_interval`` at setup; None: leave the
            trainer's).
        budget: stop once the datamodule has taken this many env steps (None: the trainer's own limits); also the
            budget :meth:`score` takes its last third of.
        threshold: the return that solves the task; with ``stop_at_threshold`` training stops at the first
            evaluation at or above it.
        floor: the return below which a run that reached ``threshold`` did not hold it (:func:`held`).
        best_path: where the weights of the best evaluation so far are saved (weights only; None: not kept).
        curve_path: a JSON file rewritten after every evaluation: ``{"curve": [...], **score()}``.
        max_minutes: stop after this much training wall time (evaluations excluded).
    """

    def __init__(
        self,
        eval_every: int | None = None,
        budget: int | None = None,
        threshold: float | None = None,
        floor: float | None = None,
        stop_at_threshold: bool = False,
        paired_decision: bool = False,
        best_path: str | Path | None = None,
        curve_path: str | Path | None = None,
        max_minutes: float = math.inf,
    ) -> None:
        if eval_every is not None and eval_every < 1:
            raise ValueError(f"EvalCallback: eval_every must be >= 1 env steps, got {eval_every}")
        if stop_at_threshold and threshold is None:
            raise ValueError("EvalCallback: stop_at_threshold needs a threshold")
        self.eval_every, self.budget, self.threshold, self.floor = eval_every, budget, threshold, floor
        self.stop_at_threshold, self.paired_decision, self.max_minutes = stop_at_threshold, paired_decision, max_minutes
        self.best_path = Path(best_path) if best_path is not None else None
        self.curve_path = Path(curve_path) if curve_path is not None else None
        self.curve: list[dict] = []
        self.best_return = -math.inf
        self.start = time.perf_counter()
        self.evaluating_s = 0.0  # wall time spent in evaluations (not training)
        self._batch_end = self.start

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.eval_every is not None and stage == "fit":
            data = trainer.datamodule  # one training batch consumes frames_per_batch / updates_per_collection
            trainer.val_check_interval = max(
                1, round(self.eval_every * data.updates_per_collection / data.frames_per_batch)
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = self._batch_end = time.perf_counter()
        self.evaluating_s = 0.0

    @property
    def training_s(self) -> float:
        """Training wall time up to the last training batch's end (collection and updates, evaluations excluded)."""
        return self._batch_end - self.start - self.evaluating_s

    def on_train_batch_end(self, trainer: Trainer, *_args: Any) -> None:  # noqa: ANN401
        self._batch_end = time.perf_counter()
        over_budget = self.budget is not None and trainer.datamodule.env_steps >= self.budget
        if over_budget or self.training_s >= 60 * self.max_minutes:
            trainer.should_stop = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning plays the evaluation episodes while it prepares the validation loop, before any on_validation_*
        # hook: an evaluation is everything between the training batch that ends before it and this hook.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        point = {
            "env_steps": int(trainer.datamodule.env_steps),
            "return_mean": float(metrics["val/return_mean"]),
            **{key[len("val/") :]: float(value) for key, value in metrics.items() if key.startswith("val/end_")},
        }
        if self.paired_decision:
            point[f"return_mean_by_{PAIRED_DECISION}"] = self.paired_return(trainer.datamodule, pl_module)
        now = time.perf_counter()
        self.evaluating_s += now - self._batch_end
        point.update(wall_s=now - self.start - self.evaluating_s, wall_with_evals_s=now - self.start)
        self.curve.append(point)
        self.after_evaluation(trainer, point)

    def paired_return(self, data: Any, agent: Any) -> float:  # noqa: ANN401
        """The mean return of the other greedy decision on the datamodule's evaluation start states."""
        policy = agent.make_policy(greedy=True, greedy_decision=PAIRED_DECISION)
        return float(data.evaluate(policy, data.val_episodes, data.seed + 10_000)["episode_return"].mean())

    def after_evaluation(self, trainer: Trainer, point: dict) -> None:
        """Keep the best weights, stop at the threshold, write the curve."""
        if self.best_path is not None and point["return_mean"] > self.best_return:
            self.best_path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.best_path, weights_only=True)
        self.best_return = max(self.best_return, point["return_mean"])
        if self.stop_at_threshold and point["return_mean"] >= self.threshold:
            trainer.should_stop = True
        if self.curve_path is not None:
            self.curve_path.parent.mkdir(parents=True, exist_ok=True)
            self.curve_path.write_text(json.dumps({"curve": self.curve, **self.score()}, indent=1) + "\n")

    def score(self, key: str = "return_mean") -> dict:
        """The protocol's reading of the curve: ``score`` (the last-third mean of ``key``; NaN without a budget or
        evaluations there), ``reached_env_steps`` (the first evaluation at the threshold) and ``held``."""
        reached = first_reached(self.curve, self.threshold, key) if self.threshold is not None else None
        return {
            "score": last_third_mean(self.curve, self.budget, key) if self.budget is not None else math.nan,
            "reached_env_steps": reached,
            "held": held(self.curve, self.threshold, self.floor, key)
            if None not in (self.threshold, self.floor)
            else None,
            "best_return_mean": self.best_return if self.curve else None,
        }
