"""Learning curves from a run's ``metrics.csv`` (``CSVLogger``): return, the four phase losses, emotion usage.

Units: returns are sums of environment rewards; losses and values are in the agent's value units,
``return_scale * G``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from emotion_rl.viz.style import Figure, emotion_color, empty_panel

__all__ = ["plot_emotion_usage", "plot_metrics", "plot_run_comparison", "read_metrics"]

PHASE_PANELS = (
    ("train/phase1_dynamics_loss", "Phase 1: dynamics loss", "||Z - s_next||^2 (observation units^2)"),
    ("train/phase2_action_loss", "Phase 2: action loss", "loss (value units for max_value)"),
    ("train/phase3_value_loss", "Phase 3: value loss", "(V - return_scale G)^2 (value units^2)"),
    ("train/phase4_policy_loss", "Phase 4: policy loss", "cross-entropy to MCTS visits (nats)"),
)
BATCH_AXIS = "training batch (4 optimizer steps each)"


def read_metrics(csv_path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``CSVLogger`` ``metrics.csv`` as ``{column: value}``, empty cells left out (a row holds what was
    logged at its ``step``). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an empty one."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with open(path, newline="") as f:
        rows = [
            {key: float(value) for key, value in row.items() if key is not None and value not in ("", None)}
            for row in csv.DictReader(f)
        ]
    if not rows:
        raise ValueError(f"{path} has no metric rows")
    return rows


def _series(rows: Sequence[Mapping[str, float]], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r[x], r[key]) for r in rows if key in r and x in r and math.isfinite(r[key])]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*pairs, strict=True)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _env_steps_at(rows: Sequence[Mapping[str, float]], batches: np.ndarray) -> np.ndarray | None:
    """Environment steps at each training batch in ``batches`` (the last logged value at or before it)."""
    steps, env_steps = _series(rows, "episode/env_steps")
    if not len(steps):
        return None
    order = np.argsort(steps, kind="stable")
    steps, env_steps = steps[order], env_steps[order]
    index = np.clip(np.searchsorted(steps, batches, side="right") - 1, 0, len(steps) - 1)
    return env_steps[index]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    smooth = np.convolve(values, kernel, mode="valid")
    return np.concatenate([np.full(window - 1, np.nan), smooth])


def _return_panel(ax, rows: Sequence[Mapping[str, float]]) -> None:  # noqa: ANN001
    env_steps, returns = _series(rows, "episode/return", x="episode/env_steps")
    ax.set_title("Return vs environment steps")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return (sum of rewards)")
    if len(env_steps):
        ax.plot(env_steps, returns, color="tab:blue", alpha=0.3, lw=1, label="training (recent episodes)")
        window = max(1, min(10, len(returns) // 5))
        if window > 1:
            ax.plot(env_steps, _moving_average(returns, window), color="tab:blue", lw=2, label=f"mean of {window} logs")
    batches, val = _series(rows, "val/return_mean")
    if len(batches):
        at = _env_steps_at(rows, batches)
        if at is not None:
            _, std = _series(rows, "val/return_std")
            yerr = std if len(std) == len(val) else None
            ax.errorbar(at, val, yerr=yerr, fmt="o", color="tab:red", capsize=3, label="greedy evaluation (mean, std)")
    if len(env_steps) or len(batches):
        ax.legend(fontsize=7, loc="upper left")
    else:
        empty_panel(ax, "episode/return not logged")


def _usage_panel(ax, rows: Sequence[Mapping[str, float]], n_emotions: int | None = None) -> None:  # noqa: ANN001
    keys = sorted((k for k in rows[0].keys() | set().union(*rows) if k.startswith("emotion/usage_")), key=_k_index)
    if n_emotions is not None:
        keys = keys[:n_emotions]
    ax.set_title("Emotion usage during collection")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("fraction of steps")
    usable = [r for r in rows if "episode/env_steps" in r and all(k in r and math.isfinite(r[k]) for k in keys)]
    if not keys or not usable:
        empty_panel(ax, "emotion/usage_k not logged")
        return
    x = np.asarray([r["episode/env_steps"] for r in usable])
    stack = np.asarray([[r[k] for r in usable] for k in keys])
    ax.stackplot(x, stack, colors=[emotion_color(_k_index(k)) for k in keys], labels=[f"e{_k_index(k)}" for k in keys])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="emotion", title_fontsize=7)


def _k_index(key: str) -> int:
    return int(key.rsplit("_", 1)[-1])


def plot_metrics(csv_path: str | os.PathLike, title: str | None = None) -> Figure:
    """A run's logged metrics (``CSVLogger``'s ``metrics.csv``) in six panels.

    Panels: return vs environment steps (training episodes and greedy evaluations), the loss of each of the four
    training phases against the training batch (spec 2.2, 2.3; phase 2 also shows the imagined value of the
    section 4.3 objective when it was logged), and the emotion usage over environment steps. A metric missing
    from the file leaves its panel with a note instead of failing.
    """
    rows = read_metrics(csv_path)
    known = {"episode/return", "val/return_mean", *(key for key, _, _ in PHASE_PANELS)}
    if not known & set().union(*rows):
        raise ValueError(f"{csv_path} holds none of the training metrics ({', '.join(sorted(known))})")
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, 3)
    _return_panel(axes[0, 0], rows)
    for ax, (key, panel_title, ylabel) in zip(
        [axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1]], PHASE_PANELS, strict=True
    ):
        ax.set_title(panel_title)
        ax.set_xlabel(BATCH_AXIS)
        ax.set_ylabel(ylabel)
        x, y = _series(rows, key)
        if not len(x):
            empty_panel(ax, f"{key} not logged")
            continue
        ax.plot(x, y, lw=1.2, label=key.split("/", 1)[1])
        if key == "train/phase2_action_loss":
            xv, yv = _series(rows, "train/phase2_imagined_value")
            if len(xv) and np.any(yv != 0):
                ax.plot(xv, yv, lw=1.2, ls="--", label="imagined value V(Z(h, A(h)))")
        elif np.all(y > 0) and y.max() / max(y.min(), 1e-12) > 20:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    _usage_panel(axes[1, 2], rows)
    fig.suptitle(title if title is not None else f"Training metrics: {csv_path}")
    return fig


def plot_run_comparison(runs: Mapping[str, str | os.PathLike], title: str | None = None) -> Figure:
    """Several runs side by side (e.g. ``phase2_objective`` literal vs max_value): return vs environment steps,
    greedy evaluations, and the phase-2 action loss and imagined value against the training batch."""
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_return, ax_loss, ax_value = fig.subplots(1, 3)
    for index, (name, path) in enumerate(runs.items()):
        rows = read_metrics(path)
        color = f"C{index}"
        x, y = _series(rows, "episode/return", x="episode/env_steps")
        ax_return.plot(x, y, color=color, lw=1.2, label=f"{name}: training")
        batches, val = _series(rows, "val/return_mean")
        at = _env_steps_at(rows, batches)
        if len(batches) and at is not None:
            ax_return.plot(at, val, "o--", color=color, label=f"{name}: greedy evaluation")
        ax_loss.plot(*_series(rows, "train/phase2_action_loss"), color=color, label=name)
        ax_value.plot(*_series(rows, "train/phase2_imagined_value"), color=color, label=name)
    ax_return.set(title="Return vs environment steps", xlabel="environment steps", ylabel="episode return")
    ax_loss.set(title="Phase 2: action loss", xlabel=BATCH_AXIS, ylabel="loss (value units for max_value)")
    ax_value.set(title="Phase 2: imagined value V(Z(h, A(h)))", xlabel=BATCH_AXIS, ylabel="value (return_scale G)")
    for ax in (ax_return, ax_loss, ax_value):
        ax.legend(fontsize=7)
    fig.suptitle(title or "Runs compared")
    return fig


def plot_emotion_usage(csv_path: str | os.PathLike) -> Figure:
    """Emotion usage over training (``emotion/usage_k`` against environment steps), stacked to 1."""
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    _usage_panel(fig.subplots(), read_metrics(csv_path))
    return fig
