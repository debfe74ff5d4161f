"""Search gain of a checkpoint: does its search act better than its own prior, its values, or any single emotion?

The measurement is the package's (:func:`emotion_rl.evaluation.measure_gain`): greedy play, the same fixed start
states for every row (``search``, ``search_by_<other decision>``, ``values``, ``prior``, ``emotion_<e>``), per row
mean, std, min and max return, the search's changes against its prior, the gains, the emotions' head agreement and,
with ``--disagreements K``, the disagreement check at up to ``K`` states per episode (``--horizon`` steps each).

    python benchmarks/search_gain.py models/cartpole.ckpt --env-id CartPole-v1 --episodes 100 \\
        --out benchmarks/results/search_gain/cartpole_shipped.json
    python benchmarks/search_gain.py runs/cartpole/version_0/checkpoints/last.ckpt --episodes 20
    python benchmarks/search_gain.py models/cartpole.ckpt --env-id CartPole-v1 --episodes 20 --disagreements 3
    python benchmarks/search_gain.py models/cartpole.ckpt --env-id CartPole-v1 --planner max_depth=1 --rows values

The env comes from the checkpoint's datamodule section (``env_id``, its options and ``time_limit``) when it has
one; a weights-only checkpoint such as ``models/cartpole.ckpt`` has none, so ``--env-id`` is then required.
``--time-limit`` caps every episode (default: the checkpoint's ``time_limit``, else the env's registered limit).
Needs the ``viz`` or ``benchmark`` extra (the checkpoint is read with ``emotion_rl.viz.load_agent``).
See docs/benchmarks.md, "Search gain" and "Emotion heads".
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from emotion_rl.evaluation import checkpoint_settings, display_path, gain_table, measure_gain

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a Lightning checkpoint of EmotionAgent (weights-only ones too)")
    parser.add_argument("--env-id", default=None, help="default: the checkpoint's datamodule env_id")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per row (one env each)")
    parser.add_argument("--seed", type=int, default=0, help="env seed: the same start states for every row")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--time-limit", type=int, default=None, help="steps per episode at most")
    parser.add_argument("--disagreements", type=int, default=0, metavar="K", help="check K states per episode (0: off)")
    parser.add_argument("--horizon", type=int, default=100, help="steps per rollout of the disagreement check")
    parser.add_argument("--rows", nargs="+", help="only these rows (search always): e.g. search_by_action values")
    parser.add_argument(
        "--planner", nargs="+", default=[], metavar="KEY=VALUE", help="the search with these arguments changed "
        "or its root rule's (numbers as numbers), e.g. max_depth=1 c_scale=1.0: which part of it wins or loses",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.planner = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.planner)}
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.time_limit is not None and args.time_limit < 1:
        parser.error(f"--time-limit must be >= 1, got {args.time_limit}")
    if args.disagreements < 0:
        parser.error(f"--disagreements must be >= 0, got {args.disagreements}")
    if args.horizon < 1:
        parser.error(f"--horizon must be >= 1, got {args.horizon}")
    return args


def changed(planner, changes: dict) -> object:  # noqa: ANN001 - an EmotionMCTS
    """``planner`` with ``changes`` applied: its own arguments, or its root rule's (``c_scale=1.0``)."""
    rule = planner.root_rule.init_args()
    ours = {key: value for key, value in changes.items() if key not in rule}
    root = type(planner.root_rule)(**{**rule, **{key: changes[key] for key in changes if key in rule}})
    return planner.replace(root_rule=root, **ours)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark of ``argv`` (the command line when None); print the table, write ``--out``, return the
    report."""
    from emotion_rl.viz import load_agent

    args = parse(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    settings = checkpoint_settings(args.ckpt, args.env_id, args.time_limit)
    agent = load_agent(args.ckpt)
    agent.planner = changed(agent.planner, args.planner) if args.planner else agent.planner
    check = {"disagreements": args.disagreements, "horizon": args.horizon, "rows": args.rows}
    report = {
        "checkpoint": display_path(args.ckpt, ROOT),
        "planner_changes": args.planner,
        **measure_gain(agent, settings, args.episodes, args.seed, **check),
    }
    print(gain_table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
