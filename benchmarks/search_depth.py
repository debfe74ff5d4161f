"""How far the search sees: what the tree believes along the path the agent really took, against what happened.

One checkpoint, greedy play with its own planner, every search's tree read along the path the agent really took
(:func:`emotion_rl.evaluation.measure_depth`, whose docstring defines the readings):

- dynamics by depth: the imagined state against the real ``s_{t+k}``, and whether the imagined action was taken;
- values by depth: the stored ``V^e``, the backed-up ``Q`` and the leaf value against the real discounted return
  (returns cut by the time limit reported apart, ``--cut-tolerance``);
- root Q gaps: best minus second-best completed ``Q`` at the root, against the RMSE of the root's ``Q``.

    python benchmarks/search_depth.py models/cartpole.ckpt --env-id CartPole-v1 --episodes 20 \\
        --out benchmarks/results/search_depth/cartpole_shipped.json

``--out`` writes the JSON report and the markdown table next to it (``.md``). The env, the time limit and the
reading of the checkpoint are those of ``benchmarks/search_gain.py`` (``checkpoint_settings``). Every tree is kept
until the end: about ``episodes * steps * (num_simulations + 1) * E * (obs_dim + 5)`` numbers (measured: about
0.5 GB for 20 CartPole episodes of 500 steps, beside the 0.5 GB the libraries and the model take).
See docs/benchmarks.md, "How far the search sees".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from emotion_rl.evaluation import checkpoint_settings, display_path, measure_depth
from emotion_rl.evaluation.depth import CUT_TOLERANCE, QUANTILES

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- output
def table(report: dict) -> str:
    """The markdown summary: dynamics by depth, values by depth, the root gaps against the value error."""

    def f(x: float | None, digits: int = 3) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"

    lines = [
        "| imagined state, depth k | reached | n | mean ‖ŝ - s‖ | median | RMSE | imagined action = taken | "
        "RMSE, actions all taken | RMSE from the real s_{t+k-1} | RMSE of s_t as the guess |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, row in report["dynamics"].items():
        lines.append(
            f"| {k} | {f(row['reached'], 2)} | {row['n']} | {f(row['mean'])} | {f(row['median'])} | {f(row['rmse'])} "
            f"| {f(row['action_match'], 2)} | {f(row['path_matched']['rmse'])} | {f(row['from_real_state']['rmse'])} "
            f"| {f(row['guess_s_t']['rmse'])} |"
        )
    lines += [
        "",
        "| value - return_scale G_{t+k} | k | n exact | mean | median | RMSE | n cut | RMSE cut |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"value": "stored V^{e_{t+k}} at node_k", "q": "Q(node_k, e_{t+k})", "leaf": "leaf value of node_k"}
    for kind, by_depth in report["values"].items():
        for k, row in by_depth.items():
            exact, cut = row["exact"], row["cut"]
            lines.append(
                f"| {names[kind]} | {k} | {exact['n']} | {f(exact['mean'])} | {f(exact['median'])} | "
                f"{f(exact['rmse'])} | {cut['n']} | {f(cut['rmse'])} |"
            )
    gaps = report["root_gap"]
    lines += [
        "",
        f"| root Q gap / RMSE of the root's Q ({f(gaps['value_rmse'])}) | n | median gap | "
        + " | ".join(f"{q:.0%}" for q in QUANTILES)
        + " | share below 1 |",
        "|---|---|---|" + "---|" * len(QUANTILES) + "---|",
    ]
    for name, label in (
        ("best_second", "best - second-best child"),
        ("best_other_action", "best - best of another action"),
    ):
        gap = gaps[name]
        ratios = " | ".join(f(gap["ratio_quantiles"].get(str(q)), 2) for q in QUANTILES)
        lines.append(
            f"| {label} | {gap['n']} | {f(gap['gap_quantiles'].get('0.5'), 4)} | {ratios} | "
            f"{f(gap['share_below_rmse'], 3)} |"
        )
    lines += [
        "",
        f"{report['env_id']}, {report['episodes']} greedy episodes (env seed {report['seed']}, time limit "
        f"{report['time_limit']}; {report['terminated']} terminated), {report['decisions']} decisions, "
        f"gamma {report['gamma']}, return_scale {report['return_scale']}, {report['planner']}",
    ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a Lightning checkpoint of EmotionAgent (weights-only ones too)")
    parser.add_argument("--env-id", default=None, help="default: the checkpoint's datamodule env_id")
    parser.add_argument("--episodes", type=int, default=20, help="greedy episodes (one env each)")
    parser.add_argument("--seed", type=int, default=0, help="env seed (the start states)")
    parser.add_argument("--time-limit", type=int, default=None, help="steps per episode at most")
    parser.add_argument("--cut-tolerance", type=float, default=CUT_TOLERANCE, help="see the module docstring")
    parser.add_argument("--out", default=None, help="write the report as JSON here (and the table as .md)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.time_limit is not None and args.time_limit < 1:
        parser.error(f"--time-limit must be >= 1, got {args.time_limit}")
    if not 0 < args.cut_tolerance < 1:
        parser.error(f"--cut-tolerance must be in (0, 1), got {args.cut_tolerance}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark of ``argv`` (the command line when None); print the table, write ``--out``, return the
    report."""
    from emotion_rl.viz import load_agent

    args = parse(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    settings = checkpoint_settings(args.ckpt, args.env_id, args.time_limit)
    agent = load_agent(args.ckpt)
    report = {
        "checkpoint": display_path(args.ckpt, ROOT),
        **measure_depth(agent, settings, args.episodes, args.seed, args.cut_tolerance),
    }
    text = table(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        command = " ".join(["python benchmarks/search_depth.py", *(sys.argv[1:] if argv is None else argv)])
        out.with_suffix(".md").write_text(f"`{command}`\n\n{text}\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
