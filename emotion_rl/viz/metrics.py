"""Learning curves from a run's ``metrics.csv`` (``CSVLogger``): return, the four phase losses, emotion usage, and
the diagnostics (``diagnostics/*``: the action heads and imagined values; ``search/*``: the search against the prior).

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

__all__ = [
    "DIAGNOSTIC_PREFIXES",
    "has_diagnostics",
    "plot_diagnostics",
    "plot_emotion_usage",
    "plot_metrics",
    "plot_run_comparison",
    "read_metrics",
]

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


DIAGNOSTIC_PREFIXES = ("diagnostics/", "search/")
"""Metric names :func:`plot_diagnostics` draws start with one of these."""


def has_diagnostics(rows: Sequence[Mapping[str, float]]) -> bool:
    """True when any row of :func:`read_metrics`'s output holds a ``diagnostics/*`` or ``search/*`` metric."""
    return any(key.startswith(DIAGNOSTIC_PREFIXES) for row in rows for key in row)


def _diagnostic_series(rows: Sequence[Mapping[str, float]], key: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """``key`` against the training batch (``x="batch"``) or the environment steps collected by then."""
    batches, values = _series(rows, key)
    if x == "env_steps" and len(batches):
        at = _env_steps_at(rows, batches)
        if at is not None:
            return at, values
    return batches, values


def _line_panel(
    ax,  # noqa: ANN001 - matplotlib Axes
    rows: Sequence[Mapping[str, float]],
    lines: Sequence[tuple[str, str]],
    title: str,
    ylabel: str,
    x: str,
    xlabel: str,
    unit_interval: bool = False,
) -> None:
    """One panel with a line per ``(key, label)``; a grey note names the keys when none was logged."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    drawn = 0
    for key, label in lines:
        xs, ys = _diagnostic_series(rows, key, x)
        if len(xs):
            ax.plot(xs, ys, lw=1.2, label=label)
            drawn += 1
    if not drawn:
        empty_panel(ax, f"{', '.join(key for key, _ in lines)} not logged")
        return
    if unit_interval:
        ax.set_ylim(-0.02, 1.02)
    if len(lines) > 1:
        ax.legend(fontsize=7)


def _entropy_panel(ax, rows: Sequence[Mapping[str, float]], x: str, xlabel: str) -> None:  # noqa: ANN001
    prefix = "diagnostics/action_entropy_"
    keys = sorted({key for row in rows for key in row if key.startswith(prefix)}, key=_k_index)
    ax.set_title("Action-head entropy per emotion")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("entropy (nats)")
    drawn = False
    for key in keys:
        xs, ys = _diagnostic_series(rows, key, x)
        if len(xs):
            k = _k_index(key)
            ax.plot(xs, ys, lw=1.2, color=emotion_color(k), label=f"e{k}")
            drawn = True
    if not drawn:
        empty_panel(ax, f"{prefix}<e> not logged")
        return
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="emotion", title_fontsize=7)


_DIAGNOSTIC_LINE_PANELS = (
    (
        (0, 1),
        (("diagnostics/action_agreement", "action agreement"),),
        "Action agreement between emotions",
        "share of emotion pairs with the same argmax action",
        True,
    ),
    (
        (0, 2),
        (("diagnostics/imagined_value_bias", "imagined - real"),),
        "Imagined value bias",
        "value at imagined s_t+1 - value at real t+1 (value units)",
        False,
    ),
    (
        (1, 0),
        (
            ("diagnostics/imagined_value_error_true", "true next state"),
            ("diagnostics/imagined_value_error_predicted", "predicted next state"),
        ),
        "Imagined value errors",
        "squared error on y_t+1 (value units^2)",
        False,
    ),
    (
        (1, 1),
        (
            ("search/kl_target_prior", "KL(target || prior)"),
            ("search/kl_visits_prior", "KL(visits || prior), runs logged before the rename"),
        ),
        "Search vs prior: KL(policy target || prior)",
        "mean KL at the root (nats)",
        False,
    ),
    (
        (1, 2),
        (("search/argmax_agreement", "argmax agreement"),),
        "Search vs prior: argmax agreement",
        "share of states, argmax visits = argmax prior",
        True,
    ),
)
"""The line panels of :func:`plot_diagnostics`: ``((row, column), ((key, label), ...), title, ylabel,
unit_interval)``; the panel at ``(0, 0)`` is the action-head entropies."""


def _diagnostics_x_axis(rows: Sequence[Mapping[str, float]], x: str) -> tuple[str, str]:
    """``(x, xlabel)`` of :func:`plot_diagnostics`: ``x``, or the training batch when ``x="env_steps"`` but
    ``episode/env_steps`` was not logged."""
    if x == "env_steps" and not len(_series(rows, "episode/env_steps")[0]):  # not logged: batches it is
        x = "batch"
    return x, "environment steps" if x == "env_steps" else BATCH_AXIS


def plot_diagnostics(csv_path: str | os.PathLike, title: str | None = None, x: str = "env_steps") -> Figure:
    """What shows whether learning works, from a run's ``metrics.csv``, in six panels.

    ``diagnostics/*`` (logged per training batch with ``log_diagnostics``): each emotion's action-head entropy, the
    share of emotion pairs whose action heads agree, the imagined-value bias, and the imagined-value errors on the
    true and the predicted next state. ``search/*`` (logged per collection): the mean ``KL(visits || prior)`` at
    the root and the share of states whose most visited emotion is the prior's favourite. Everything is drawn
    against the environment steps collected by then (``x="env_steps"``; the training batch when
    ``episode/env_steps`` was not logged) or against the training batch (``x="batch"``). A metric missing from the
    file leaves its panel with a note; a file with none of them raises ``ValueError``.
    """
    if x not in ("env_steps", "batch"):
        raise ValueError(f"plot_diagnostics: x must be 'env_steps' or 'batch', got {x!r}")
    rows = read_metrics(csv_path)
    if not has_diagnostics(rows):
        raise ValueError(
            f"{csv_path} holds none of the diagnostics ({', '.join(p + '*' for p in DIAGNOSTIC_PREFIXES)})"
        )
    x, xlabel = _diagnostics_x_axis(rows, x)
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, 3)
    _entropy_panel(axes[0, 0], rows, x, xlabel)
    for at, lines, panel_title, ylabel, unit_interval in _DIAGNOSTIC_LINE_PANELS:
        _line_panel(axes[at], rows, lines, panel_title, ylabel, x, xlabel, unit_interval)
    axes[0, 2].axhline(0.0, color="0.6", lw=0.8, ls=":")
    fig.suptitle(title if title is not None else f"Diagnostics: {csv_path}")
    return fig
