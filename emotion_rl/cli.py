"""Command line: ``python -m emotion_rl {fit,validate,test} --config configs/cartpole.yaml`` (LightningCLI).

Configs are read with OmegaConf in jsonargparse's ``omegaconf+`` mode: interpolations are resolved after the
config files and the command line are merged, so ``data.seed: ${..seed_everything}`` follows
``--seed_everything 7``. Interpolations are relative (``${..key}``) because the merged tree is rooted at the
subcommand (``fit.data.seed``); the same file then serves ``fit``, ``validate`` and ``test``.

The environment's sizes (observation size, number of actions, longest episode) are read from the datamodule
and linked into the agent, so a config never repeats them; so is the datamodule's ``context_window``. The agent
is then connected to the datamodule (``EmotionDataModule.connect``): its policies play the self-play episodes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from emotion_rl.agent import EmotionAgent
from emotion_rl.checkpoint import AtomicCheckpointIO, CheckpointError, find_last_checkpoint, load_checkpoint
from emotion_rl.datamodule import EmotionDataModule


class ConfigurationError(ValueError):
    """A setting the user can fix, found while a subcommand runs: printed as one line, without a traceback."""


USER_ERRORS = (CheckpointError, ConfigurationError)
"""Errors raised while a subcommand runs that are the user's to fix; any other error there keeps its traceback."""


class BatchProgressBar(TQDMProgressBar):
    """TQDM bar that counts training batches against ``max_steps`` in batches (Lightning's ``max_steps`` counts the
    four optimizer steps of a batch, so its own bar would end at a quarter)."""

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return -(-trainer.max_steps // max(len(trainer.optimizers), 1))
        return super().total_train_batches


class EmotionCLI(LightningCLI):
    """LightningCLI over :class:`EmotionAgent` and :class:`EmotionDataModule` with the environment linked in.

    Subcommands: ``fit``, ``validate``, ``test`` (an agent acts through environments, so ``predict`` has nothing to
    predict). No ``--optimizer``/``--lr_scheduler``: the agent owns its four optimizers (spec 3.2).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except ValueError as error:  # raised while running: a real bug unless it is one of USER_ERRORS
            error.raised_while_running = True
            raise

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        for name in ("obs_dim", "n_actions", "max_episode_steps", "context_window"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.link_arguments("data.gamma", "model.value_gamma", apply_on="parse")  # one discount for all targets

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does, then hand the agent to the datamodule (its policies play)."""
        super().instantiate_classes()
        self.datamodule.connect(self.model)

    def instantiate_trainer(self, **kwargs) -> Trainer:  # noqa: ANN003 - LightningCLI's trainer arguments
        if not (self._get(self.config_init, "trainer", default={}) or {}).get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])  # atomic writes, safe loads (emotion_rl.checkpoint)
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):  # a TQDM bar in batches, pinned (not Rich because rich happens to be installed)
            kwargs["callbacks"] = [*callbacks, BatchProgressBar(refresh_rate=10)]
        return add_tensorboard(super().instantiate_trainer(**kwargs))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyperparameters with a bare ``torch.load`` before anything else runs:
        check the file first, so a truncated, corrupt or hostile checkpoint gets :class:`CheckpointError`'s message."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and Path(ckpt_path).exists():
            load_checkpoint(ckpt_path, map_location="cpu")
        super()._parse_ckpt_path()

    def _resolve_last_checkpoint(self) -> None:
        """``--ckpt_path last`` resumes the previous run's newest checkpoint (``checkpoint.find_last_checkpoint``).

        ``fit`` without one starts a new run and says so (so a job can always pass ``--ckpt_path last``);
        ``validate`` and ``test`` without one are refused.
        """
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        found = find_last_checkpoint(self.trainer)
        if found is not None:
            print(f"emotion_rl: --ckpt_path last: resuming from {found}", file=sys.stderr)
            config["ckpt_path"] = str(found)
        elif self.subcommand == "fit":
            print("emotion_rl: --ckpt_path last: no last.ckpt from an earlier run; starting a new run", file=sys.stderr)
            config["ckpt_path"] = None
        else:
            raise CheckpointError(
                f"--ckpt_path last: no last.ckpt was found where this config's checkpoints are written; "
                f"pass the checkpoint's path to {self.subcommand} with --ckpt_path PATH"
            )

    before_fit = before_validate = before_test = _resolve_last_checkpoint


def tensorboard_available() -> bool:
    """True when Lightning's ``TensorBoardLogger`` can write (``tensorboard`` or ``tensorboardX`` is installed)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def add_tensorboard(trainer: Trainer) -> Trainer:
    """Give the config's single ``CSVLogger`` a ``TensorBoardLogger`` twin when tensorboard is installed.

    The twin writes its event file into the CSV logger's folder (same ``save_dir``, ``name`` and ``version``), so
    ``runs/cartpole/version_0`` holds ``metrics.csv``, the TensorBoard events and the checkpoints; the CSV logger
    stays first (it decides ``trainer.log_dir`` and the checkpoint folder). Any other logger setting (a list, no
    logger, TensorBoard already) is left as it is, and without tensorboard the run logs CSV only.
    """
    loggers = trainer.loggers
    if len(loggers) == 1 and type(loggers[0]) is CSVLogger and tensorboard_available():
        csv = loggers[0]
        twin = TensorBoardLogger(csv.save_dir, name=csv.name, version=csv.version, default_hp_metric=False)
        trainer.loggers = [csv, twin]
    return trainer


def main(args: list[str] | None = None, run: bool = True) -> EmotionCLI:
    """Entry point of ``emotion-rl`` / ``python -m emotion_rl``. A setting the user got wrong (any ``ValueError``
    while parsing and instantiating; :data:`USER_ERRORS` while running) exits with its message and no traceback.

    torch runs on one CPU thread unless ``OMP_NUM_THREADS`` says otherwise: the planner's many small operations
    run several times faster on one thread, and two threads on two busy cores can be 10x slower (docs/performance.md).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    # Lightning 2.6 on torch 2.13 warns on every batch about its own use of a deprecated torch pytree API.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # EmotionAgent.training_step takes Lightning's `dataloader_iter` on purpose (exact resume; see its docstring).
    warnings.filterwarnings("ignore", message=r".*Found `dataloader_iter` argument.*")
    warnings.filterwarnings("ignore", message=r".*You are using the `dataloader_iter` step flavor.*")
    try:
        return EmotionCLI(
            EmotionAgent,
            EmotionDataModule,
            parser_kwargs={"parser_mode": "omegaconf+"},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )
    except ValueError as error:  # a setting, an environment or a checkpoint the user named
        if getattr(error, "raised_while_running", False) and not isinstance(error, USER_ERRORS):
            raise  # not a setting: a bug, with its traceback
        print(f"emotion_rl: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as error:  # a loss or gradient turned NaN/inf: stopped before the weights changed
        print(f"emotion_rl: training stopped: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def console() -> int:
    """The ``emotion-rl`` console script: :func:`main` on ``sys.argv``, exit status 0 when it returns."""
    main()
    return 0
