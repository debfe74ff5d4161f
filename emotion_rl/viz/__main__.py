"""``python -m emotion_rl.viz {plot,curves,render,tree}``: a run's curves, runs' evaluation curves, a GIF or MP4 of
episodes, one search tree.

    python -m emotion_rl.viz plot runs/cartpole/version_0/metrics.csv    # runs/.../curves.png (+ _diagnostics.png)
    python -m emotion_rl.viz curves benchmarks/results/stays_solved/screen/*.json --out curves.png --threshold 475
    python -m emotion_rl.viz render --config configs/cartpole.yaml --ckpt_path runs/.../last.ckpt --out episode.gif
    python -m emotion_rl.viz render --ckpt_path models/cartpole.ckpt --out episodes.mp4 --episodes 3
    python -m emotion_rl.viz tree --config configs/cartpole.yaml --ckpt_path runs/.../last.ckpt --out tree.png

A missing or unreadable input exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from emotion_rl.checkpoint import load_checkpoint
from emotion_rl.env_record import EnvironmentRecord
from emotion_rl.viz.curves import plot_curves, read_curves
from emotion_rl.viz.episodes import play_episode, render_episode
from emotion_rl.viz.metrics import has_diagnostics, plot_diagnostics, plot_metrics, read_metrics
from emotion_rl.viz.tree import draw_search_tree
from emotion_rl.viz.video import record_video

__all__ = ["default_plot_path", "diagnostics_path", "load_agent", "main"]


def diagnostics_path(out: str | os.PathLike) -> Path:
    """Where ``plot`` writes the diagnostics figure: next to ``out``, ``curves.png`` -> ``curves_diagnostics.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_diagnostics{out.suffix or '.png'}")


def load_agent(ckpt_path: str | os.PathLike):  # noqa: ANN201 - EmotionAgent (imported lazily)
    """An :class:`~emotion_rl.EmotionAgent` from a Lightning checkpoint, on the CPU in eval mode
    (``EmotionAgent.load``: its own hyper-parameters rebuild the model and its planner)."""
    from emotion_rl.agent import EmotionAgent

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return EmotionAgent.load(path)


def default_plot_path(metrics: str | os.PathLike) -> Path:
    """Where ``plot`` writes without ``--out``: ``curves.png`` in the run's folder, next to its ``metrics.csv``."""
    return Path(metrics).parent / "curves.png"


def _env_id(config: str | None, ckpt_path: str, env_id: str | None) -> str:
    """``--env_id``, else the config's ``data.env_id``, else the checkpoint's datamodule, else CartPole-v1."""
    if env_id:
        return env_id
    if config:
        from emotion_rl.cli import load_config

        if not Path(config).is_file():
            raise FileNotFoundError(f"config not found: {config}")
        data = load_config(config).get("data") or {}  # with the files it includes (__include__)
        if data.get("env_id"):
            return str(data["env_id"])
    return EnvironmentRecord.of_checkpoint(load_checkpoint(ckpt_path)).env_id or "CartPole-v1"


def _add_plot_command(commands: argparse._SubParsersAction) -> None:
    """``plot METRICS [--out] [--dpi] [--title]``."""
    plot = commands.add_parser(
        "plot",
        help="plot a run's metrics.csv to PNG (no TensorBoard needed); with diagnostics/* or search/* metrics also "
        "the diagnostics figure next to it (curves.png -> curves_diagnostics.png)",
        description="Plot a run's metrics.csv to PNG: the learning curves to --out and, when the CSV holds any "
        "diagnostics/* or search/* metric, the diagnostics figure next to it (curves.png -> curves_diagnostics.png).",
    )
    plot.add_argument("metrics", help="metrics.csv written by the CSVLogger (runs/cartpole/version_N/metrics.csv)")
    plot.add_argument(
        "--out",
        default=None,
        help="output image (default: curves.png in the run's folder, next to metrics.csv); the diagnostics figure, "
        "when written, goes to <stem>_diagnostics<suffix> in the same folder",
    )
    plot.add_argument("--dpi", type=int, default=80)
    plot.add_argument("--title", default=None)
    curves = commands.add_parser("curves", help="plot the evaluation curves of result or curve JSON files to PNG")
    curves.add_argument("results", nargs="+", help="JSON files with a 'curve' (benchmarks/learning.py, EvalCallback)")
    curves.add_argument("--out", required=True, help="output image")
    curves.add_argument("--threshold", type=float, default=None, help="draw this return as a dashed line")
    curves.add_argument("--dpi", type=int, default=80)
    curves.add_argument("--title", default=None)


def _add_checkpoint_commands(commands: argparse._SubParsersAction) -> None:
    """``render`` and ``tree``: their shared checkpoint, env and output flags, then each one's own."""
    for name, text in (
        ("render", "play greedy episodes: an animated GIF of one (--out x.gif) or an MP4 of --episodes (--out x.mp4)"),
        ("tree", "draw one search tree"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--ckpt_path", required=True, help="Lightning checkpoint of a fit (…/checkpoints/last.ckpt)")
        sub.add_argument("--config", default=None, help="the run's config (its data.env_id is used)")
        sub.add_argument("--env_id", default=None, help="overrides the config's and the checkpoint's env")
        sub.add_argument("--seed", type=int, default=0, help="seed of the environment's reset")
        sub.add_argument("--out", required=True, help="output file (.gif or .mp4 for render, .png for tree)")
    commands.choices["render"].add_argument("--fps", type=int, default=30)
    commands.choices["render"].add_argument(
        "--episodes", type=int, default=1, help="episodes in an MP4, one after the other (gymnasium's RecordVideo)"
    )
    commands.choices["render"].add_argument("--scale", type=float, default=0.5, help="frame size factor")
    commands.choices["render"].add_argument("--max_steps", type=int, default=None)
    tree = commands.choices["tree"]
    tree.add_argument("--step", type=int, default=20, help="search at this step of a greedy episode (default 20)")
    tree.add_argument("--num_simulations", type=int, default=None, help="default: the checkpoint's")
    tree.add_argument("--c_puct", type=float, default=None, help="default: the checkpoint's")
    tree.add_argument("--min_visits", type=int, default=2, help="draw deeper children with at least this many visits")
    tree.add_argument("--dpi", type=int, default=80)


def _plot(args: argparse.Namespace) -> None:
    """``plot``: the curves to ``--out``, and the diagnostics figure next to them when the CSV has any."""
    args.out = args.out or default_plot_path(args.metrics)
    plot_metrics(args.metrics, title=args.title).savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    if has_diagnostics(read_metrics(args.metrics)):
        extra = diagnostics_path(args.out)
        plot_diagnostics(args.metrics, title=args.title).savefig(extra, dpi=args.dpi)
        print(f"wrote {extra}")


def _curves(args: argparse.Namespace) -> None:
    """``curves``: the runs' evaluation curves, one panel per decision, to ``--out``."""
    missing = [path for path in args.results if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"result file not found: {missing[0]}")
    plot_curves(read_curves(args.results), args.threshold, args.title).savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


def _render(args: argparse.Namespace, agent, env_id: str) -> None:  # noqa: ANN001 - EmotionAgent
    """``render``: ``--episodes`` greedy episodes as one MP4 for a ``.mp4`` ``--out``, else one as a GIF."""
    if Path(args.out).suffix.lower() == ".mp4":
        returns = record_video(agent, args.out, env_id, args.seed, args.episodes, args.max_steps, fps=args.fps)
        shown = ", ".join(f"{r:.0f}" for r in returns)
        print(f"wrote {args.out}: {len(returns)} greedy episode(s) of {env_id}, returns {shown}")
        return
    record = render_episode(agent, args.out, env_id, args.seed, args.max_steps, fps=args.fps, scale=args.scale)
    print(f"wrote {args.out}: {record.length} frames, return {record.episode_return:.0f}")


def _tree(args: argparse.Namespace, agent, env_id: str) -> None:  # noqa: ANN001 - EmotionAgent
    """``tree``: the agent's own search at ``--step`` of a greedy episode, ``--num_simulations`` and ``--c_puct``
    on top, drawn to ``--out``."""
    record = play_episode(agent, env_id, seed=args.seed, max_steps=args.step + 1)
    step = min(args.step, record.length - 1)
    planner = agent.planner.replace(  # the agent's own search (root rule, Q transform, ...), the flags on top
        num_simulations=args.num_simulations or agent.planner.num_simulations,
        c_puct=agent.planner.c_puct if args.c_puct is None else args.c_puct,
    )
    result = planner.search(agent.model, record.history(step, window=agent.hparams.get("context_window")))
    title = (
        f"{env_id}, step {step} of a greedy episode (seed {args.seed}): {planner.num_simulations} simulations, "
        f"c_puct {planner.c_puct:g}, {type(planner.root_rule).__name__}\n"
        f"N visits, Q = W/N (value units), P prior; deeper children with N >= "
        f"{args.min_visits}"
    )
    draw_search_tree(result, min_visits=args.min_visits, title=title).savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emotion_rl.viz {plot,curves,render,tree}``; a missing or unreadable input exits with status 2."""
    parser = argparse.ArgumentParser(prog="python -m emotion_rl.viz", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_plot_command(commands)
    _add_checkpoint_commands(commands)
    args = parser.parse_args(argv)
    sub = commands.choices[args.command]
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        if args.command in ("plot", "curves"):
            _plot(args) if args.command == "plot" else _curves(args)
            return 0
        agent = load_agent(args.ckpt_path)
        env_id = _env_id(args.config, args.ckpt_path, args.env_id)
        (_render if args.command == "render" else _tree)(args, agent, env_id)
        return 0
    except (FileNotFoundError, ValueError) as error:
        sub.error(str(error))
    return 2  # pragma: no cover - sub.error exits


if __name__ == "__main__":
    sys.exit(main())
