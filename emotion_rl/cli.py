"""Command line: ``python -m emotion_rl {fit,validate,test} --config configs/cartpole.yaml`` (LightningCLI).

Configs are read with OmegaConf in jsonargparse's ``omegaconf+`` mode: interpolations are resolved after the
config files and the command line are merged, so ``data.seed: ${..seed_everything}`` follows
``--seed_everything 7``. Interpolations are relative (``${..key}``) because the merged tree is rooted at the
subcommand (``fit.data.seed``); the same file then serves ``fit``, ``validate`` and ``test``.

A config file may build on others: its top-level ``__include__`` (:data:`INCLUDE_KEY`) names a config file, or a
list of them, relative to the including file; they are applied first and the file's own settings on top, exactly
as if each had been given before it with ``--config``. ``configs/cartpole.yaml`` is ``configs/base.yaml`` plus
what CartPole changes, yet stays one ``--config``; ``--print_config`` and the run's saved ``config.yaml`` show the
merged result (:class:`ComposingConfigFile`).

The environment's sizes (observation size, number of actions, longest episode) are read from the datamodule
and linked into the agent, so a config never repeats them; so is the datamodule's ``context_window``. The agent
is then connected to the datamodule (``EmotionDataModule.connect``): its policies play the self-play episodes.

Every checkpoint records its environment (:class:`~emotion_rl.env_record.RecordEnvironment`); ``--ckpt_path`` with
a config for another environment is refused, and without ``--config`` the checkpoint's own settings apply. What is
refused before anything is built (abbreviated options, a ``fit`` without an end) is in :mod:`emotion_rl.cli_guards`
(docs/resuming.md).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import torch
import yaml
from jsonargparse import ActionConfigFile, get_loader
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from emotion_rl.agent import EmotionAgent
from emotion_rl.checkpoint import AtomicCheckpointIO, CheckpointError, find_last_checkpoint, load_checkpoint
from emotion_rl.cli_guards import (
    ConfigurationError,
    GuardedArgumentParser,
    check_fit_has_an_end,
    with_checkpoint_settings,
)
from emotion_rl.data.datamodule import EmotionDataModule
from emotion_rl.data.envs import NonFiniteError
from emotion_rl.env_record import EnvironmentMismatchError, EnvironmentRecord, RecordEnvironment, check_environment

if TYPE_CHECKING:
    from omegaconf import DictConfig


USER_ERRORS = (CheckpointError, ConfigurationError, EnvironmentMismatchError, NonFiniteError)
"""Errors raised while a subcommand runs that are the user's to fix; any other error there keeps its traceback."""


INCLUDE_KEY = "__include__"
"""Top-level key of a config file that names the config files it builds on: a path, or a list of paths, relative to
the including file. jsonargparse 4.53 has no such key: its maintainers advise repeating ``--config``, and an opt-in
``__include__`` at any level is planned for its 5.0 (unreleased when this was written). This one is top-level only
and is read by :func:`config_layers`."""


def config_layers(path: str | os.PathLike) -> list[tuple[Path, dict | None]]:
    """The config files that the config file ``path`` is made of, in the order they apply: what each includes (its
    own layers, depth first) before it. Each comes with the settings it gives itself, without :data:`INCLUDE_KEY`, or
    ``None`` for a file that includes nothing (read as it is, also when it cannot be read: jsonargparse then reports
    it).

    Raises :class:`ConfigurationError` (one line naming the including file) when an included file does not exist,
    when a file includes itself through the chain, or when ``__include__`` is not a path or a list of paths.
    """
    return _layers(Path(path), ())


def _layers(path: Path, chain: tuple[Path, ...]) -> list[tuple[Path, dict | None]]:
    try:
        settings = get_loader("yaml")(path.read_text())  # jsonargparse's own YAML reading
    except Exception:  # noqa: BLE001 - unreadable or not YAML: jsonargparse reads it and reports the problem
        return [(path, None)]
    if not isinstance(settings, dict) or INCLUDE_KEY not in settings:
        return [(path, None)]
    settings = dict(settings)
    included = settings.pop(INCLUDE_KEY)
    names = included if isinstance(included, list) else [included]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ConfigurationError(f"config '{path}': {INCLUDE_KEY} must be a path or a list of paths, not {included!r}")
    trail = (*chain, path)
    layers: list[tuple[Path, dict | None]] = []
    for name in names:
        base = path.parent / name
        if not base.is_file():
            raise ConfigurationError(
                f"config '{path}': {INCLUDE_KEY} '{name}' does not exist (looked for '{base}': relative to that config)"
            )
        if any(base.resolve() == seen.resolve() for seen in trail):
            cycle = " -> ".join(str(p) for p in (*trail, base))
            raise ConfigurationError(f"config '{path}': circular {INCLUDE_KEY}: {cycle}")
        layers += _layers(base, trail)
    return [*layers, (path, settings)]


class ComposingConfigFile(ActionConfigFile):
    """``--config``/``-c``: jsonargparse's config-file argument, which first applies the files a config file names
    under :data:`INCLUDE_KEY` (:func:`config_layers`), then the file's own settings: the same as one ``--config`` per
    layer. Values given as YAML strings, and files without the key, are read as jsonargparse reads them. A file's own
    settings are applied as a YAML string, so a relative path *value* in a file that has ``__include__`` is read from
    the working directory, not from the file's folder (the shipped configs have none)."""

    def __call__(self, parser, cfg, values, option_string=None) -> None:  # noqa: ANN001 - argparse's signature
        layers = config_layers(values) if isinstance(values, str) and os.path.isfile(values) else [(values, None)]
        for path, settings in layers:
            if settings is None:
                self.apply_config(parser, cfg, self.dest, str(path))
            elif settings:  # the file's own settings, as a YAML string (the include key is not a setting)
                self.apply_config(parser, cfg, self.dest, yaml.safe_dump(settings, sort_keys=False))


def load_config(path: str | os.PathLike) -> DictConfig:
    """The config file ``path`` with its includes merged (:func:`config_layers`), as an OmegaConf ``DictConfig``,
    interpolations unresolved: for code that reads a config's values without the command line (benchmarks, viz).
    Merged as OmegaConf merges (mappings key by key, lists replaced), which for these configs is what ``--config``
    gives; the command line's parser remains the reference (``--print_config``)."""
    from omegaconf import OmegaConf

    layers = [OmegaConf.load(p) if s is None else OmegaConf.create(s) for p, s in config_layers(path)]
    return OmegaConf.merge(*layers)


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

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - LightningCLI's arguments
        self._records: dict[str, EnvironmentRecord] = {}  # --ckpt_path's records, read once (LightningCLI's __init__
        super().__init__(*args, **kwargs)  # parses, instantiates and runs: the cache must exist first)

    def init_parser(self, **kwargs) -> LightningArgumentParser:  # noqa: ANN003 - the parser's arguments
        """LightningCLI's parser with :class:`ComposingConfigFile` as its ``--config`` (for the subcommands too)."""
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ComposingConfigFile,
            help=f"Path to a configuration file in json or yaml format. Its top-level {INCLUDE_KEY} names config "
            "files (relative to it) that apply first.",
        )
        return parser

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
        parser.link_arguments("data.gamma", "model.gamma", apply_on="parse")  # one discount for all targets

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does, then hand the agent to the datamodule (its policies play)."""
        super().instantiate_classes()
        self.datamodule.connect(self.model)

    def instantiate_trainer(self, **kwargs) -> Trainer:  # noqa: ANN003 - LightningCLI's trainer arguments
        """LightningCLI's trainer, with :class:`AtomicCheckpointIO` (unless the config names a plugin), a
        :class:`BatchProgressBar` (unless the config names a bar or switches it off) and :class:`RecordEnvironment`
        (every checkpoint records its environment)."""
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        if not trainer_config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])  # atomic writes, safe loads (emotion_rl.checkpoint)
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):  # a TQDM bar in batches, pinned (not Rich because rich happens to be installed)
            callbacks.append(BatchProgressBar(refresh_rate=10))
        if not any(isinstance(c, RecordEnvironment) for c in callbacks):
            callbacks.append(RecordEnvironment())
        kwargs["callbacks"] = callbacks
        return add_tensorboard(super().instantiate_trainer(**kwargs))

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:  # noqa: ANN001 - LightningCLI's ArgsType
        """LightningCLI's parsing, where ``--ckpt_path FILE`` without ``--config`` first applies the checkpoint's own
        data settings (:func:`~emotion_rl.cli_guards.with_checkpoint_settings`)."""
        if args is not None and not isinstance(args, (list, tuple)):  # a dict or Namespace: parsed as it is
            return super().parse_arguments(parser, args)
        argv = list(sys.argv[1:] if args is None else args)
        completed = with_checkpoint_settings(argv, self._datamodule_class)
        if args is None and completed != argv:  # sys.argv completed: not "args and sys.argv both given"
            self.config = parser.parse_args(completed)
            return None
        return super().parse_arguments(parser, None if args is None else completed)

    def before_instantiate_classes(self) -> None:
        """Refuse a ``fit`` that would never end (:func:`~emotion_rl.cli_guards.check_fit_has_an_end`), before
        anything is built."""
        if self.subcommand == "fit":
            check_fit_has_an_end(self.config["fit"])

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyperparameters with a bare ``torch.load`` before anything else runs:
        check the file first, so a truncated, corrupt or hostile checkpoint gets :class:`CheckpointError`'s message."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and Path(ckpt_path).exists():
            self._checkpoint_record(ckpt_path)
        super()._parse_ckpt_path()

    def _checkpoint_record(self, path: str) -> EnvironmentRecord:
        """The environment record of the checkpoint ``path`` (loaded safely once, then remembered)."""
        if path not in self._records:
            self._records[path] = EnvironmentRecord.of_checkpoint(load_checkpoint(path, map_location="cpu"))
        return self._records[path]

    def _before_running(self) -> None:
        """Resolve ``--ckpt_path last`` (:meth:`_resolve_last_checkpoint`), then refuse a checkpoint whose environment
        differs from the config's (:func:`~emotion_rl.env_record.check_environment`), before it is loaded."""
        self._resolve_last_checkpoint()
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file() and hasattr(self.datamodule, "env_info"):
            config = EnvironmentRecord.of_datamodule(self.datamodule)
            check_environment(str(ckpt_path), self._checkpoint_record(str(ckpt_path)), config, self.subcommand)

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

    before_fit = before_validate = before_test = _before_running


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
            parser_kwargs={"parser_mode": "omegaconf+", "allow_abbrev": False},
            parser_class=GuardedArgumentParser,
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
