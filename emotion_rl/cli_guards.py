"""What the command line refuses or supplies before anything is built: misspelt and abbreviated options, a fit that
would never end, and the settings of a checkpoint given without a config (docs/resuming.md).

Each refusal is one line that names what is wrong and how to fix it, raised before a model, an environment or a log
folder exists.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from emotion_rl.checkpoint import load_checkpoint

__all__ = [
    "ConfigurationError",
    "GuardedArgumentParser",
    "check_fit_has_an_end",
    "checkpoint_data_settings",
    "with_checkpoint_settings",
]

SUBCOMMANDS = ("fit", "validate", "test")


class ConfigurationError(ValueError):
    """A setting the user can fix (a config's ``__include__``, or one found while a subcommand runs): printed as one
    line, without a traceback."""


class GuardedArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, for the CLI's parsers built with ``allow_abbrev=False``: an unknown option is refused
    (argparse would otherwise take ``--model.num_simulation`` as the only option it abbreviates), and the refusal names
    the closest option when there is one ("did you mean --model.num_simulations?")."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if "unrecognized arguments:" in message.lower():
            parser = getattr(ex, "subcommand_parser", None) or self
            message += _suggestion(message, list(getattr(parser, "_option_string_actions", {})))
        super().error(message, ex)


def _suggestion(message: str, options: Sequence[str]) -> str:
    unknown = re.findall(r"(--[\w.\-]+)", message.partition(":")[2])
    close = []
    for name in unknown:
        extended = sorted(option for option in options if option.startswith(name))  # what argparse would have taken
        close += extended[:1] or difflib.get_close_matches(name, options, n=1, cutoff=0.8)
    if not close:
        return " (options are never abbreviated: give the full name)"
    return f" (did you mean {', '.join(close)}? options are never abbreviated)"


def check_fit_has_an_end(config: Any) -> None:  # noqa: ANN401 - a jsonargparse Namespace of the fit subcommand
    """Refuse a ``fit`` that nothing stops: the self-play stream is endless, so one of ``trainer.max_steps``,
    ``data.total_frames`` or ``trainer.max_time`` must be set (or ``fast_dev_run``, or ``max_epochs`` with an integer
    ``limit_train_batches``). Raises :class:`ConfigurationError`."""
    trainer, data = config.get("trainer") or {}, config.get("data") or {}
    max_epochs, limit = trainer.get("max_epochs"), trainer.get("limit_train_batches")
    bounded_epochs = max_epochs not in (None, -1) and isinstance(limit, int) and limit > 0
    if (
        (trainer.get("max_steps") or -1) > 0
        or (data.get("total_frames") or -1) > 0
        or trainer.get("max_time")
        or trainer.get("fast_dev_run")
        or bounded_epochs
    ):
        return
    raise ConfigurationError(
        "fit would never end: the self-play stream is endless and neither trainer.max_steps (optimizer steps, 4 per "
        "batch) nor data.total_frames (environment steps) is set; set one, e.g. --trainer.max_steps 12000 as "
        "configs/cartpole.yaml does (configs/base.yaml is shared settings, not a run)"
    )


def checkpoint_data_settings(checkpoint: dict[str, Any], datamodule_class: type) -> dict[str, Any]:
    """The datamodule settings a checkpoint was trained with (its ``datamodule_hyper_parameters``), limited to the
    arguments ``datamodule_class`` accepts (a setting an older version had and this one dropped is left out)."""
    saved = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    accepted = inspect.signature(datamodule_class).parameters
    return {key: value for key, value in saved.items() if key in accepted}


def with_checkpoint_settings(argv: Sequence[str], datamodule_class: type) -> list[str]:
    """``argv`` of ``fit|validate|test --ckpt_path FILE`` without ``--config``: the checkpoint's own data settings
    inserted as a config right after the subcommand, so they apply before any other option (which may still change
    them; the environment check then compares). The model's come from the checkpoint already (LightningCLI reads its
    ``hyper_parameters``). Any other ``argv`` is returned as it is."""
    argv = list(argv)
    start = next((i for i, token in enumerate(argv) if token in SUBCOMMANDS), None)
    if start is None:
        return argv
    rest = argv[start + 1 :]
    if any(token in ("-c", "--config") or token.startswith("--config=") for token in rest):
        return argv
    path = _option_value(rest, "--ckpt_path")
    if path is None or not Path(path).is_file():
        return argv
    settings = checkpoint_data_settings(load_checkpoint(path), datamodule_class)
    if not settings:
        return argv
    layer = yaml.safe_dump({"data": settings}, sort_keys=False)
    return [*argv[: start + 1], f"--config={layer}", *rest]


def _option_value(tokens: Sequence[str], name: str) -> str | None:
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(f"{name}="):
            return token.partition("=")[2]
    return None
