"""The environment a checkpoint was trained on, written into every checkpoint and checked when one is loaded.

A model is only meaningful in the environment it learned: its input size is the observation size, its action heads
the number of actions, and it plans on a context of a given number of real steps (decision 15). A Lightning
checkpoint alone says none of this in one place: the sizes are in the agent's hyper-parameters, the env id in the
datamodule's. :class:`EnvironmentRecord` is that one place. :class:`RecordEnvironment` (a Lightning callback that
the CLI always installs) writes it under :data:`RECORD_KEY`; :meth:`EnvironmentRecord.of_checkpoint` reads it, and
rebuilds it from the hyper-parameters of a checkpoint written before the record existed (``models/cartpole.ckpt``).
:func:`check_environment` refuses, in one line naming both sides, a config whose environment differs from the
checkpoint's (docs/resuming.md, "Checkpoints know their environment").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["RECORD_KEY", "EnvironmentMismatchError", "EnvironmentRecord", "RecordEnvironment", "check_environment"]

RECORD_KEY = "environment"
"""Top-level key of a checkpoint that holds its :class:`EnvironmentRecord` (a plain dict: loads with
``weights_only=True``)."""


class EnvironmentMismatchError(ValueError):
    """A checkpoint used with a config whose environment differs from the one it was trained on."""


@dataclass(frozen=True)
class EnvironmentRecord:
    """What a model needs its environment to be (``None``: not known, for a field an old checkpoint lacks).

    Args:
        env_id: the gymnasium id (``module:EnvId`` as given), or the ``env_factory`` path of a TorchRL env.
        obs_dim: observation size (the model's input).
        n_actions: number of discrete actions (each action head's output).
        max_episode_steps: the episode time limit the data was collected with.
        context_window: the real steps the model plans on; ``None``: the whole episode (``max_episode_steps``).
    """

    env_id: str | None
    obs_dim: int | None
    n_actions: int | None
    max_episode_steps: int | None
    context_window: int | None

    @classmethod
    def of_datamodule(cls, datamodule: Any) -> EnvironmentRecord:  # noqa: ANN401 - an EmotionDataModule
        """The record of a datamodule's environment (``env_info``, probed from the env) and context window."""
        info = datamodule.env_info
        return cls(info.env_id, info.obs_dim, info.n_actions, info.max_episode_steps, datamodule.context_window)

    @classmethod
    def of_checkpoint(cls, checkpoint: dict[str, Any]) -> EnvironmentRecord:
        """The checkpoint's record; for a checkpoint written before records existed, the same facts from the agent's
        hyper-parameters (sizes, linked there from the datamodule) and the datamodule's (env id, context window)."""
        if isinstance(checkpoint.get(RECORD_KEY), dict):
            fields = {f.name: checkpoint[RECORD_KEY].get(f.name) for f in dataclasses.fields(cls)}
            return cls(**fields)
        model = checkpoint.get("hyper_parameters") or {}
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        window = data["context_window"] if "context_window" in data else model.get("context_window")
        return cls(
            data.get("env_factory") or data.get("env_id"),
            model.get("obs_dim"),
            model.get("n_actions"),
            model.get("max_episode_steps"),
            window,
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self, fields: tuple[str, ...] | None = None) -> str:
        """``CartPole-v1 (observation size 4, 2 actions, episodes of up to 500 steps, context window 32)``."""
        parts = {
            "obs_dim": f"observation size {self.obs_dim}",
            "n_actions": f"{self.n_actions} actions",
            "max_episode_steps": f"episodes of up to {self.max_episode_steps} steps",
            "context_window": "whole episodes as context"
            if self.context_window is None
            else f"context window {self.context_window}",
        }
        shown = [text for name, text in parts.items() if fields is None or name in fields]
        return f"{self.env_id or 'an unrecorded env'} ({', '.join(shown)})"


def compared_fields(checkpoint: EnvironmentRecord, subcommand: str | None) -> tuple[str, ...]:
    """The fields a config must share with the checkpoint. Always the env id, the sizes and the context window; the
    time limit too for ``fit`` (the replay stores episodes of that length) and for a model whose context is the whole
    episode (its size is the time limit). ``validate`` and ``test`` of a model with a context window may play shorter
    or longer episodes."""
    fields = ("env_id", "obs_dim", "n_actions", "context_window")
    if subcommand == "fit" or checkpoint.context_window is None:
        fields += ("max_episode_steps",)
    return fields


def check_environment(
    path: str, checkpoint: EnvironmentRecord, config: EnvironmentRecord, subcommand: str | None = None
) -> None:
    """Raise :class:`EnvironmentMismatchError` (one line, both sides) where ``config`` differs from ``checkpoint`` in
    :func:`compared_fields`; a field the checkpoint does not record (``None`` in an old file) is not compared, except
    the context window, where ``None`` means whole episodes."""
    fields = compared_fields(checkpoint, subcommand)
    differ = [
        name
        for name in fields
        if getattr(checkpoint, name) != getattr(config, name)
        and (getattr(checkpoint, name) is not None or name == "context_window")
    ]
    if not differ:
        return
    command = subcommand or "use"
    raise EnvironmentMismatchError(
        f"checkpoint {path!r} was trained on {checkpoint.describe(fields)}, but this config's environment is "
        f"{config.describe(fields)}; they differ in {', '.join(differ)}. {command.capitalize()} it with the config it "
        "was trained with, or leave out --config to use the checkpoint's own settings"
    )


class RecordEnvironment(Callback):
    """Writes the :class:`EnvironmentRecord` of the trainer's datamodule into every checkpoint (:data:`RECORD_KEY`).

    The CLI installs it; with a plain ``Trainer`` pass ``callbacks=[RecordEnvironment()]``. Without a datamodule that
    has ``env_info``, the record holds what the agent knows: its sizes, time limit and context, no env id.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "env_info"):
            record = EnvironmentRecord.of_datamodule(datamodule)
        else:
            record = EnvironmentRecord.of_checkpoint({"hyper_parameters": dict(pl_module.hparams)})
        checkpoint[RECORD_KEY] = record.as_dict()
