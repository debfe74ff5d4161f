"""Command line: ``python -m emotion_rl {fit,validate,test} --config configs/cartpole.yaml`` (LightningCLI).

Configs are read with OmegaConf in jsonargparse's ``omegaconf+`` mode: interpolations are resolved after the
config files and the command line are merged, so ``data.seed: ${..seed_everything}`` follows
``--seed_everything 7``. Interpolations are relative (``${..key}``) because the merged tree is rooted at the
subcommand (``fit.data.seed``); the same file then serves ``fit``, ``validate`` and ``test``.

The environment's sizes (observation size, number of actions, longest episode) are read from the datamodule
and linked into the agent, so a config never repeats them.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
from lightning.pytorch.cli import LightningCLI

from emotion_rl.agent import EmotionAgent
from emotion_rl.data import EmotionDataModule


class EmotionCLI(LightningCLI):
    """LightningCLI over :class:`EmotionAgent` and :class:`EmotionDataModule` with the environment linked in."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        for name in ("obs_dim", "n_actions", "max_episode_steps"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> EmotionCLI:
    """Entry point of ``python -m emotion_rl``. A setting the user got wrong exits with its message, no traceback.

    torch runs on one CPU thread unless ``OMP_NUM_THREADS`` says otherwise: the planner's many small operations
    run several times faster on one thread, and two threads on two busy cores can be 10x slower (measured, README).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    # Lightning 2.6 on torch 2.13 warns on every batch about its own use of a deprecated torch pytree API.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        return EmotionCLI(
            EmotionAgent,
            EmotionDataModule,
            parser_kwargs={"parser_mode": "omegaconf+"},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except ValueError as error:
        print(f"emotion_rl: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
