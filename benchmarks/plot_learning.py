"""README table and learning-curve image from the result files of ``benchmarks/learning.py``.

    python benchmarks/plot_learning.py benchmarks/results/learning
    python benchmarks/plot_learning.py benchmarks/results/learning --image docs/images/learning_curve.png
    python benchmarks/plot_learning.py benchmarks/results/learning --seeds 0 1 --no-image   # the ablation table
    python benchmarks/plot_learning.py benchmarks/results/learning --env Acrobot-v1 --image acrobot.png

Reads the result files of the folder and of its per-env subfolders (``<folder>/<env id>/*.json``); when they hold
several environments, ``--env`` picks one (a result file that names no env is CartPole-v1's, as written by earlier
versions of ``learning.py``; a run found in both places is read from the subfolder).

Prints a markdown table (one row per variant: seeds solved, env steps and wall time to reach the threshold, the best
evaluation during training, the final evaluation over the final-evaluation episodes, and the seed statistics
below) and draws evaluation return against environment steps for every variant: the mean over seeds as a line and
the band between the lowest and highest seed (both drawn where every seed has a value), each seed thin. A run that
stopped early because it reached the threshold holds its last evaluation for the rest of the axis, as its trained
agent would; a run stopped by its env-step budget or time limit ends where it stopped.

Seed statistics (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice"): per variant, the
interquartile mean (IQM, ``emotion_rl.evaluation.iqm``) over seeds of the final evaluation return and of the
env steps to the threshold (a run that never reached it counts as its budget), each with a 95% percentile
confidence interval from a stratified bootstrap over seeds (``BOOTSTRAP_REPS`` resamples from the fixed seed
``BOOTSTRAP_SEED``, so the table is the same on every call); and the median env steps to the threshold (same
convention) and median training wall time per seed. A variant with one seed gets its value and no interval.

The bootstrap is written here, the way ``rliable.library.StratifiedBootstrap`` does it for one task (resample the
seeds with replacement, percentile interval), because ``rliable.library`` does not import with current pandas
and arch releases (arch before 8 calls a pandas helper that pandas 3 removed; arch 8 no longer accepts the
``random_state`` argument rliable passes).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from emotion_rl.evaluation import iqm

ROOT = Path(__file__).resolve().parents[1]
LEGACY_ENV = "CartPole-v1"
LABELS = {
    "emotion": "emotion MCTS (configs/cartpole.yaml)",
    "ppo": "PPO (stable-baselines3, RL Zoo hyperparameters)",
    "literal": "ablation: literal phase-2 objective",
    "one_emotion": "ablation: 1 emotion",
    "sims8": "ablation: 8 simulations",
    "sims25": "ablation: 25 simulations",
    "sims50": "ablation: 50 simulations",
}
BOOTSTRAP_REPS = 2_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def env_of(result: dict) -> str:
    """The environment of a result (CartPole-v1 for files of earlier versions, which do not name it)."""
    return result.get("env_id", LEGACY_ENV)


def is_run(result: object) -> bool:
    """A learning run's result (not, say, a ``--cost-only`` report)."""
    return isinstance(result, dict) and {"variant", "seed", "curve", "threshold"} <= set(result)


def load(folder: Path, seeds: list[int] | None = None, env_id: str | None = None) -> dict[str, list[dict]]:
    """Result files of ``folder`` and its per-env subfolders grouped by variant, each group sorted by seed (only
    ``seeds`` when given, only ``env_id`` when given; several environments without ``env_id`` are an error)."""
    runs: dict[tuple[str, str, int], dict] = {}
    for path in [*sorted(folder.glob("*.json")), *sorted(folder.glob("*/*.json"))]:  # a subfolder's copy wins
        result = json.loads(path.read_text())
        if not is_run(result) or (seeds is not None and result["seed"] not in seeds):
            continue
        if env_id is None or env_of(result) == env_id:
            runs[env_of(result), result["variant"], result["seed"]] = result
    envs = sorted({env for env, _, _ in runs})
    if len(envs) > 1:
        raise ValueError(f"{folder} holds results of several environments ({', '.join(envs)}): choose one (--env)")
    groups: dict[str, list[dict]] = {}
    for result in runs.values():
        groups.setdefault(result["variant"], []).append(result)
    return {v: sorted(rs, key=lambda r: r["seed"]) for v, rs in groups.items()}


def label(variant: str, runs: list[dict]) -> str:
    """The variant's name in the table and the legend: the ablation's description, or an ad-hoc variant's overrides."""
    if variant == "emotion":
        return f"emotion MCTS (configs/{Path(runs[0]['config']).name})"
    if variant in LABELS:
        return LABELS[variant]
    overrides = runs[0].get("overrides") or []
    return f"{variant}: {' '.join(overrides)}" if overrides else variant


# ---------------------------------------------------------------------------------------------------- statistics
def iqm_interval(values: list[float]) -> tuple[float, tuple[float, float] | None]:
    """IQM of ``values`` (one per seed, ``emotion_rl.evaluation.iqm``) and its 95% stratified-bootstrap interval
    (rliable's IQM of each resample; None for fewer than 2 seeds)."""
    import numpy as np
    from rliable import metrics

    scores = np.asarray(values, dtype=float).reshape(-1, 1)  # runs x tasks, one task
    point = iqm(values)
    if len(scores) < 2:
        return point, None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resamples = rng.integers(0, len(scores), size=(BOOTSTRAP_REPS, len(scores)))
    estimates = np.array([metrics.aggregate_iqm(scores[rows]) for rows in resamples])
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return point, (float(low), float(high))


def steps_to_threshold(run: dict) -> int:
    """Env steps at which the run first reached the threshold; its budget when it never did."""
    return run["reached_env_steps"] if run["reached_env_steps"] is not None else run["budget"]


def seed_statistics(runs: list[dict]) -> dict:
    """Per variant: IQM and interval of the final return and of the steps to threshold, medians of steps and wall."""
    steps = [steps_to_threshold(r) for r in runs]
    return {
        "final_iqm": iqm_interval([r["final_return_mean"] for r in runs]),
        "steps_iqm": iqm_interval(steps),
        "steps_median": statistics.median(steps),
        "wall_median": statistics.median(r["train_wall_s"] for r in runs),
    }


def with_interval(estimate: tuple[float, tuple[float, float] | None]) -> str:
    point, interval = estimate
    if interval is None:
        return f"{point:,.0f} (1 seed)"
    return f"{point:,.0f} [{interval[0]:,.0f}, {interval[1]:,.0f}]"


# ---------------------------------------------------------------------------------------------------- table, image
def table(groups: dict[str, list[dict]]) -> str:
    """Markdown: per variant, solved seeds, env steps / wall time to threshold, final evaluation, seed statistics."""

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f}" if values else "-"

    lines = [
        "| variant | seeds solved | env steps to threshold (per seed) | wall s to threshold (median) "
        "| best evaluation during training (per seed) | final eval mean (per seed) "
        "| final eval IQM [95% CI] | env steps to threshold IQM [95% CI] | env steps to threshold (median) "
        "| training wall s per seed (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
        stats = seed_statistics(runs)
        lines.append(
            f"| {label(variant, runs)} | {solved}/{len(runs)} (final >= {threshold:g}) | {per_seed} "
            f"| {median(walls)} | {best} | {finals} | {with_interval(stats['final_iqm'])} "
            f"| {with_interval(stats['steps_iqm'])} | {stats['steps_median']:,.0f} | {stats['wall_median']:,.0f} |"
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
        ax.plot(grid, mean, color=color, linewidth=2, label=f"{label(variant, runs)} ({len(runs)} seeds)")
    first = next(iter(groups.values()))[0]
    ax.axhline(first["threshold"], color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"greedy evaluation return ({first['eval_episodes']} episodes)")
    ax.set_title(f"{env_of(first)}: mean over seeds (thick), min..max band, each seed (thin)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    image.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(image, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="folder of <variant>_s<seed>.json files (and <env id>/ subfolders)")
    parser.add_argument("--env", help="only the results of this Gymnasium env id (needed when there are several)")
    parser.add_argument("--image", type=Path, default=ROOT / "docs" / "images" / "learning_curve.png")
    parser.add_argument("--variants", nargs="+", default=["emotion", "ppo"], help="curves to draw")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (e.g. those the ablations ran)")
    parser.add_argument("--no-image", action="store_true", help="print the table only")
    args = parser.parse_args()
    try:
        groups = load(args.results, args.seeds, args.env)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if not groups:
        raise SystemExit(f"no result files (*.json) in {args.results}; run benchmarks/learning.py first")
    print(table(groups))
    if not args.no_image:
        plot(groups, args.image, args.variants)
        print(f"\nwrote {args.image}")


if __name__ == "__main__":
    main()
