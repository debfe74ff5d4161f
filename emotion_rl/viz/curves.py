"""Evaluation curves of training runs, as the protocol records them (``EvalCallback``'s ``curve``, the result files
of ``benchmarks/learning.py``): each run's greedy evaluations against environment steps, one panel per evaluated
quantity (the configured decision's ``return_mean`` and, where paired, ``return_mean_by_<decision>``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from emotion_rl.viz.style import Figure

__all__ = ["curve_keys", "plot_curves", "read_curves"]


def read_curves(paths: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """``{run name: result}`` from JSON files that hold a ``curve`` (the name: ``<variant> seed <seed>``, else the
    file's stem)."""
    runs = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        if "curve" not in result:
            raise ValueError(f"{path} holds no evaluation curve ('curve'): not a learning.py result or curve file")
        name = f"{result['variant']} seed {result['seed']}" if "variant" in result else Path(path).stem
        runs[name] = result
    return runs


def curve_keys(runs: Mapping[str, dict]) -> list[str]:
    """The evaluated quantities the runs' curves hold: ``return_mean``, then each ``return_mean_by_<decision>``."""
    keys = {key for result in runs.values() for point in result["curve"] for key in point}
    return ["return_mean", *sorted(key for key in keys if key.startswith("return_mean_by_"))]


def plot_curves(runs: Mapping[str, dict], threshold: float | None = None, title: str | None = None) -> Figure:
    """One panel per :func:`curve_keys`, one line per run (its greedy evaluations against env steps), the last third
    of each run's ``budget`` shaded (what the protocol scores) and the ``threshold`` drawn when given."""
    keys = curve_keys(runs)
    fig = Figure(figsize=(6 * len(keys), 4.5), layout="constrained")
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    budgets = [result["budget"] for result in runs.values() if result.get("budget")]
    for ax, key in zip(axes, keys, strict=True):
        for index, (name, result) in enumerate(runs.items()):  # a run keeps its colour in every panel
            points = [p for p in result["curve"] if key in p]
            if points:
                x, y = [p["env_steps"] for p in points], [p[key] for p in points]
                ax.plot(x, y, marker=".", color=f"C{index % 10}", label=name)
        if budgets:
            ax.axvspan(2 * max(budgets) / 3, max(budgets), color="0.9", zorder=0, label="last third (scored)")
        if threshold is not None:
            ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1)
        label = "configured decision" if key == "return_mean" else f"decision: {key.removeprefix('return_mean_by_')}"
        ax.set(xlabel="environment steps", title=label)
    axes[0].set_ylabel("greedy evaluation return (mean)")
    handles, labels = axes[0].get_legend_handles_labels()  # the first panel holds every run
    fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=min(len(labels), 6))
    if title:
        fig.suptitle(title)
    return fig
