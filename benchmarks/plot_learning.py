"""README table and learning-curve image from the result files of ``benchmarks/learning.py``.

    python benchmarks/plot_learning.py benchmarks/results/learning
    python benchmarks/plot_learning.py benchmarks/results/learning --image docs/images/learning_curve.png
    python benchmarks/plot_learning.py benchmarks/results/learning --seeds 0 1 --no-image   # the ablation table

Prints a markdown table (one row per variant: seeds solved, env steps and wall time to reach the threshold, the best
evaluation during training, the final evaluation over the final-evaluation episodes) and draws evaluation return
against environment steps for every variant: the mean over seeds as a line and the band between the lowest and
highest seed (both drawn where every seed has a value), each seed thin. A run that stopped early because it reached
the threshold holds its last evaluation for the rest of the axis, as its trained agent would; a run stopped by its
env-step budget or time limit ends where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "emotion": "emotion MCTS (configs/cartpole.yaml)",
    "ppo": "PPO (stable-baselines3, RL Zoo hyperparameters)",
    "literal": "ablation: literal phase-2 objective",
    "one_emotion": "ablation: 1 emotion",
    "sims8": "ablation: 8 simulations",
    "sims25": "ablation: 25 simulations",
    "sims50": "ablation: 50 simulations",
}


def load(folder: Path, seeds: list[int] | None = None) -> dict[str, list[dict]]:
    """Result files grouped by variant, each group sorted by seed (only ``seeds`` when given)."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        if seeds is None or result["seed"] in seeds:
            groups.setdefault(result["variant"], []).append(result)
    return {v: sorted(rs, key=lambda r: r["seed"]) for v, rs in groups.items()}


def table(groups: dict[str, list[dict]]) -> str:
    """Markdown: per variant, solved seeds, median env steps / wall time to threshold, final evaluation."""

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f}" if values else "-"

    lines = [
        "| variant | seeds solved | env steps to threshold (per seed) | wall s to threshold (median) "
        "| best evaluation during training (per seed) | final eval mean (per seed) |",
        "|---|---|---|---|---|---|",
    ]
    order = [v for v in LABELS if v in groups] + [v for v in groups if v not in LABELS]
    for variant in order:
        runs = groups[variant]
        threshold = runs[0]["threshold"]
        solved = sum(r["solved"] for r in runs)
        steps = [r["reached_env_steps"] for r in runs]
        walls = [r["reached_wall_s"] for r in runs if r["reached_wall_s"] is not None]
        per_seed = ", ".join(
            f"{s:,}" if s is not None else f">{r['env_steps']:,}" for s, r in zip(steps, runs, strict=True)
        )
        best = ", ".join(f"{max((p['return_mean'] for p in r['curve']), default=float('nan')):.0f}" for r in runs)
        finals = ", ".join(f"{r['final_return_mean']:.0f}" for r in runs)
        lines.append(
            f"| {LABELS.get(variant, variant)} | {solved}/{len(runs)} (final >= {threshold:g}) | {per_seed} "
            f"| {median(walls)} | {best} | {finals} |"
        )
    return "\n".join(lines)


def curve_at(run: dict, grid: list[float]) -> list[float]:
    """The run's evaluation return at each grid point: its latest evaluation at or before it. A run that reached
    the threshold holds its last evaluation to the end of the axis (it stopped because it was solved); any other run
    ends at its last collected env step (it stopped at its budget or time limit)."""
    points = run["curve"]
    end = float("inf") if run["reached_env_steps"] is not None else run["env_steps"]
    values = []
    for x in grid:
        before = [p["return_mean"] for p in points if p["env_steps"] <= x]
        values.append(before[-1] if before and x <= end else float("nan"))
    return values


def plot(groups: dict[str, list[dict]], image: Path, variants: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max(r["env_steps"] for rs in groups.values() for r in rs)
    grid = [last * 1.05 * i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, variant in enumerate(v for v in variants if v in groups):
        color = f"C{index}"
        runs = groups[variant]
        curves = [curve_at(r, grid) for r in runs]
        for c in curves:
            ax.plot(grid, c, color=color, linewidth=0.5, alpha=0.35)
        # mean and band only where every seed has a value (past an unsolved seed's end they would be biased)
        columns = [[c[i] for c in curves] for i in range(len(grid))]
        complete = [all(v == v for v in col) for col in columns]
        mean = [statistics.fmean(col) if ok else float("nan") for col, ok in zip(columns, complete, strict=True)]
        low = [min(col) if ok else float("nan") for col, ok in zip(columns, complete, strict=True)]
        high = [max(col) if ok else float("nan") for col, ok in zip(columns, complete, strict=True)]
        ax.fill_between(grid, low, high, color=color, alpha=0.15)
        ax.plot(grid, mean, color=color, linewidth=2, label=f"{LABELS.get(variant, variant)} ({len(runs)} seeds)")
    threshold = next(iter(groups.values()))[0]["threshold"]
    ax.axhline(threshold, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"greedy evaluation return ({next(iter(groups.values()))[0]['eval_episodes']} episodes)")
    ax.set_title("CartPole-v1: mean over seeds (thick), min..max band, each seed (thin)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    image.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(image, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="folder of <variant>_s<seed>.json files")
    parser.add_argument("--image", type=Path, default=ROOT / "docs" / "images" / "learning_curve.png")
    parser.add_argument("--variants", nargs="+", default=["emotion", "ppo"], help="curves to draw")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (e.g. those the ablations ran)")
    parser.add_argument("--no-image", action="store_true", help="print the table only")
    args = parser.parse_args()
    groups = load(args.results, args.seeds)
    if not groups:
        raise SystemExit(f"no result files (*.json) in {args.results}; run benchmarks/learning.py first")
    print(table(groups))
    if not args.no_image:
        plot(groups, args.image, args.variants)
        print(f"\nwrote {args.image}")


if __name__ == "__main__":
    main()
