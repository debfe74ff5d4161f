"""Command line: ``python -m emotion_rl {fit,validate,test} --config configs/cartpole.yaml`` (LightningCLI).

Configs are read with OmegaConf (``parser_mode: omegaconf``), so a YAML file can interpolate its own values
(``${model.num_simulations}``). The environment's sizes (observation size, number of actions, longest episode)
are read from the datamodule and linked into the agent, so a config never repeats them.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from emotion_rl.agent import EmotionAgent
from emotion_rl.data import EmotionDataModule


class EmotionCLI(LightningCLI):
    """LightningCLI over :class:`EmotionAgent` and :class:`EmotionDataModule` with the environment linked in."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        for name in ("obs_dim", "n_actions", "max_episode_steps"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> EmotionCLI:
    """Entry point of ``python -m emotion_rl``. A setting the user got wrong exits with its message, no traceback."""
    try:
        return EmotionCLI(
            EmotionAgent,
            EmotionDataModule,
            parser_kwargs={"parser_mode": "omegaconf"},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except ValueError as error:
        print(f"emotion_rl: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
