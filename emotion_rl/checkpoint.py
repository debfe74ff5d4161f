"""Checkpoints that survive a crash: atomic writes, safe and clear loading, process RNG state (issue "Nothing lost").

- :class:`AtomicCheckpointIO` is the Lightning ``CheckpointIO`` plugin the CLI installs. It writes a checkpoint to a
  temporary file in the checkpoint's own folder, flushes it to disk and renames it over the target with
  ``os.replace``, an atomic operation on POSIX and Windows file systems. A process killed while writing (SIGKILL,
  power loss) leaves the previous checkpoint in place, never a truncated one. (Lightning's own writer goes through an
  fsspec transaction whose temporary file lives in the system temp folder: when that is another file system, the
  final move is a copy, which a kill can cut short.)
- Loading is always ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings and containers
  only, so loading never runs code from the file. A truncated, corrupt or foreign file is refused with a
  :class:`CheckpointError` that names the file, what is wrong and what to do, before any state is touched.
- :func:`rng_state` / :func:`set_rng_state` capture and restore the process's global random generators (python,
  numpy, torch CPU and CUDA) as plain tensors and numbers, so they too load with ``weights_only=True``.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = [
    "AtomicCheckpointIO",
    "BatchCheckpoint",
    "CheckpointError",
    "find_last_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
]

ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a zip archive: ``torch.save``'s format (and so Lightning's checkpoints) since torch 1.6."""
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
"""The first bytes of torch's legacy (pre-zip) format: a pickled magic number."""

TEMP_SUFFIX = ".tmp"
"""Suffix of a checkpoint being written (``.<name>.<pid>.tmp`` next to the target); never matched by ``*.ckpt``."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely: missing, truncated, corrupt, or holding arbitrary objects."""


def load_checkpoint(path: _PATH, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, with a :class:`CheckpointError` that says what is wrong and what to do.

    ``map_location`` defaults to the CPU, as Lightning's own checkpoint reader: a checkpoint written on a GPU loads
    on a machine without one, and restoring it copies each tensor to where its module or optimizer lives.

    Never unpickles arbitrary objects: a file whose pickle names anything but tensors, numbers, strings and
    containers is refused (torch's ``weights_only`` unpickler), and so is a truncated or corrupt archive. A file
    that is not in a checkpoint format at all (text, random bytes) is described as such, from its first bytes.
    """
    path = Path(path)
    fix = (
        "Resume from an earlier checkpoint of the run (ModelCheckpoint keeps them next to last.ckpt) or start "
        "without --ckpt_path; a file that a crash cut short is never left in place by emotion_rl's atomic writer."
    )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file. {fix}")
    with open(path, "rb") as file:
        head = file.read(len(LEGACY_MAGIC))
    if not head:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read (it is empty). {fix}"
        )
    if not head.startswith(ZIP_MAGIC) and not head.startswith(LEGACY_MAGIC):
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint: it starts with the bytes {head[:8].hex(' ')}, not with those of a zip "
            "archive (what torch.save and Lightning write) nor of torch's legacy format. Pass the path of a .ckpt "
            "file that Lightning or emotion_rl wrote."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # a broken pickle stream, not a refused object
            raise CheckpointError(
                f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read (UnpicklingError: "
                f"{_weights_only_reason(error)}). {fix}"
            ) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it holds objects other than tensors, numbers, strings and "
            f"containers, and loading it would run code from the file ({_weights_only_reason(error)}). Only load "
            f"checkpoints you trust; emotion_rl never unpickles arbitrary objects. {fix}"
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure to read a file of a checkpoint format: it is damaged
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({type(error).__name__}: "
            f"{_first_line(error)}). {fix}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict. {fix}"
        )
    return checkpoint


def _weights_only_reason(error: BaseException) -> str:
    """The line of torch's weights-only refusal that says what it met (``Unsupported global: GLOBAL ...``)."""
    for line in str(error).splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:") and line != "WeightsUnpickler error:":
            line = line.removeprefix("WeightsUnpickler error:").strip()
        if line.startswith(("Unsupported", "Expected", "Can only")):
            return line.split(". ")[0].rstrip(".")  # what was met, without torch's advice on allowing it
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes (temp file + fsync + ``os.replace``) and safe loads (module doc).

    The CLI installs it unless the config names its own checkpoint plugin; with a plain ``Trainer`` pass
    ``plugins=[AtomicCheckpointIO()]``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint does not take storage_options, got {storage_options!r}"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
        try:
            with open(temp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Always ``weights_only=True`` (:func:`load_checkpoint`); ``weights_only=False`` is refused. Tensors load
        on the CPU unless ``map_location`` says otherwise (Lightning's default; it resumes on any machine)."""
        if weights_only is False:
            raise CheckpointError(
                "emotion_rl checkpoints load with weights_only=True only (they hold tensors, numbers and containers); "
                "weights_only=False would allow a checkpoint to run code. Drop the weights_only=False argument."
            )
        return load_checkpoint(path, map_location=map_location)


class BatchCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a manually optimised module such as the agent, without the warning Lightning
    gives every ``every_n_train_steps`` save under manual optimisation.

    That warning ("the checkpoint will contain the model state AFTER optimization") assumes a checkpoint should hold
    the weights from before a step. Here a training batch is the unit: its four phases have all stepped when
    ``on_train_batch_end`` saves, and the replay, counters and RNG in the same checkpoint are those of the same
    moment, which is what exact resume needs (docs/resuming.md). Everything else is ``ModelCheckpoint`` as it is.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MANUAL_OPTIMIZATION_WARNING, category=UserWarning)
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)


MANUAL_OPTIMIZATION_WARNING = r"Using ModelCheckpoint with manual optimization and every_n_train_steps"
"""The start of the warning :class:`BatchCheckpoint` leaves out (Lightning 2.6, ``ModelCheckpoint``)."""


def find_last_checkpoint(trainer: Trainer) -> Path | None:
    """The newest checkpoint a previous run of this configuration wrote, or ``None`` (``--ckpt_path last``).

    Lightning looks for ``last.ckpt`` only in the checkpoint folder of the *new* run, which for the default layout
    ``<save_dir>/<name>/version_<n>/checkpoints`` is a fresh, empty ``version_<n+1>``: it would silently start from
    scratch. This looks where the config's ``ModelCheckpoint`` callbacks write: their ``dirpath`` when set, else the
    ``checkpoints`` folder of every ``version_*`` under the logger's root (``<save_dir>/<name>``), else
    ``<default_root_dir>/checkpoints``. It takes the most recently written ``*.ckpt`` there, not only ``last.ckpt``:
    ``ModelCheckpoint`` writes ``epoch=..-step=N.ckpt`` first and ``last.ckpt`` after it, and a kill between the
    two leaves ``last.ckpt`` one checkpoint behind. The files of a callback that keeps the best model (one with a
    ``monitor`` and a ``filename``, such as ``best.ckpt``) are not resume points: the best model is often older than
    the run's end.
    """
    folders: list[Path] = []
    best = [
        c.filename for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor and c.filename
    ]
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folders.append(Path(callback.dirpath))
        elif trainer.logger is not None and getattr(trainer.logger, "root_dir", None):
            folders.extend(sorted(Path(trainer.logger.root_dir).glob("version_*/checkpoints")))
        else:
            folders.append(Path(trainer.default_root_dir) / "checkpoints")
    candidates = {
        path
        for folder in folders
        for path in folder.glob("*.ckpt")
        if path.is_file() and not any(path.stem.startswith(name) for name in best)
    }
    if not candidates:
        return None
    last = ModelCheckpoint.CHECKPOINT_NAME_LAST
    return max(candidates, key=lambda path: (path.stat().st_mtime_ns, path.stem.startswith(last)))


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The global RNG states (python ``random``, numpy, torch CPU and CUDA) as weights_only-safe tensors and numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
