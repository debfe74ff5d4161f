"""Checkpoints: atomic writes (also under SIGKILL), safe loading of corrupt or hostile files, RNG state round trip."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from emotion_rl.checkpoint import (
    TEMP_SUFFIX,
    AtomicCheckpointIO,
    CheckpointError,
    load_checkpoint,
    rng_state,
    set_rng_state,
)


def _checkpoint(value: float, size: int = 1000) -> dict:
    return {"state_dict": {"w": torch.full((size,), value)}, "global_step": int(value)}


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint_in_place(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), path)

    def dying_save(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip archive")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_checkpoint(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.full((1000,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "a temporary file was left behind"
    io.save_checkpoint(_checkpoint(3.0), path)
    assert load_checkpoint(path)["global_step"] == 3


ROOT = Path(__file__).resolve().parents[1]
WRITER = textwrap.dedent(
    """
    import sys, torch
    from emotion_rl.checkpoint import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    for step in range(1, 10_000):
        checkpoint = {"state_dict": {"w": torch.full((4_000_000,), float(step))}, "global_step": step}
        print(step, flush=True)  # about to write checkpoint `step`
        io.save_checkpoint(checkpoint, path)
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05])
def test_sigkill_during_a_write_never_leaves_a_checkpoint_that_fails_to_load(tmp_path, delay):
    """A real process writing 16 MB checkpoints in a loop is killed with SIGKILL just after it starts a write."""
    path = tmp_path / "last.ckpt"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    try:
        started = [int(writer.stdout.readline()) for _ in range(3)]  # checkpoints 1 and 2 written, 3 under way
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert started == [1, 2, 3]
    checkpoint = load_checkpoint(path)
    step = checkpoint["global_step"]
    # checkpoints 1 and 2 were complete when "3" was printed; the kill may land in any later write (timing)
    assert step >= 2, step
    assert torch.equal(checkpoint["state_dict"]["w"], torch.full((4_000_000,), float(step)))
    # What a kill can leave behind is a temporary file that no checkpoint search picks up (``last*.ckpt``).
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]
    assert all(p.name.endswith(TEMP_SUFFIX) for p in tmp_path.iterdir() if p != path)


def test_a_truncated_checkpoint_is_refused_with_the_file_and_the_fix(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0, size=100_000), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*truncated or corrupt.*earlier checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_arbitrary_objects_is_refused_and_its_code_never_runs(tmp_path):
    marker, path = tmp_path / "code-ran", tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only=False"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    with open(path, "rb") as f:  # the control: the file does carry the call that a plain unpickler would run
        assert b"touch" in f.read()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian in the python state
    path = tmp_path / "rng.ckpt"
    AtomicCheckpointIO().save_checkpoint({"rng": rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), random.gauss(0, 1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item(), random.gauss(0, 1)) == expected


def test_checkpoint_size_follows_the_steps_stored_not_capacity_times_time_limit(tmp_path):
    """The replay is stored flat: a checkpoint holds the collected steps, not ``replay_capacity`` episodes padded
    to the time limit (1000 x 40 steps here); fails if padding comes back."""
    from emotion_rl.cli import main

    from conftest import CONFIG, TINY

    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            "--trainer.max_steps=16",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    path = tmp_path / "manual.ckpt"
    cli.trainer.save_checkpoint(path)
    state = load_checkpoint(path)["EmotionDataModule"]
    stored = int(state["replay"]["slots"].numel())
    assert 0 < stored <= state["env_steps"]
    replay_bytes = len(_serialised(state["replay"]))
    assert replay_bytes < 20_000 + 200 * stored, f"{replay_bytes} bytes for {stored} stored steps"
    padded = cli.datamodule.replay_capacity * cli.datamodule.max_episode_steps
    assert replay_bytes * 50 < padded * 100, "the checkpoint grows with capacity x time limit again"


def _serialised(value: object) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content", [bytes(range(7, 250)) * 20, b"model: cartpole\nsteps: 1000\n"])
def test_a_file_that_is_no_checkpoint_is_called_so_not_hostile_nor_truncated(tmp_path, content):
    """Random bytes or a text file given as a checkpoint: the message says it is not one (from its first bytes), not
    that it would run code (torch's weights-only refusal of a random pickle stream) nor that it was cut short."""
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"'{path}' is not a checkpoint: it starts with the bytes {content[:8].hex(' ')}")
    assert "run code" not in message and "truncated" not in message and "\n" not in message
    assert path.read_bytes() == content and sorted(tmp_path.iterdir()) == [path]  # nothing written


def test_a_damaged_pickle_stream_is_called_corrupt_not_hostile(tmp_path):
    """A zip checkpoint whose pickle stream is damaged is corrupt; only a refused object is 'would run code'."""
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 1}, path)
    data = bytearray(path.read_bytes())
    start = data.index(b"\x80\x02")  # the pickle protocol header of data.pkl inside the (stored) archive
    data[start + 2 : start + 6] = b"\xa1\xa2\xa3\xa4"  # opcodes that do not exist
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"truncated or corrupt .*Unsupported operand") as refused:
        load_checkpoint(path)
    assert "run code" not in str(refused.value)


def test_the_shipped_callbacks_keep_last_and_best_only_each_recording_its_environment(tmp_path, recwarn):
    """configs/base.yaml's checkpoint callbacks (the periodic one every 8 optimizer steps here instead of 1000): the
    folder holds ``last.ckpt`` and ``best.ckpt`` only; ``best.ckpt`` is the model of the best greedy evaluation;
    every checkpoint records its environment; no manual-optimisation warning from Lightning."""
    import csv
    import warnings

    import yaml
    from omegaconf import OmegaConf

    from emotion_rl.checkpoint import MANUAL_OPTIMIZATION_WARNING, BatchCheckpoint
    from emotion_rl.cli import load_config, main

    from conftest import CONFIG, TINY

    callbacks = OmegaConf.to_container(load_config(CONFIG).trainer.callbacks)
    assert [c["init_args"].get("monitor") for c in callbacks] == [None, "val/return_mean"]
    callbacks[0]["init_args"]["every_n_train_steps"] = 8
    (tmp_path / "often.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    warnings.simplefilter("always")
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            f"--config={tmp_path / 'often.yaml'}",
            *TINY,
            "--trainer.max_steps=40",
            "--trainer.val_check_interval=2",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert not [w for w in recwarn if re.match(MANUAL_OPTIMIZATION_WARNING, str(w.message))]
    folder = tmp_path / "cartpole" / "version_0"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    with open(folder / "metrics.csv") as file:
        returns = [float(row["val/return_mean"]) for row in csv.DictReader(file) if row.get("val/return_mean")]
    assert len(returns) == 5 and len(set(returns)) > 1
    best, last = (load_checkpoint(folder / "checkpoints" / name) for name in ("best.ckpt", "last.ckpt"))
    keeper = next(c for c in cli.trainer.checkpoint_callbacks if c.monitor)
    assert float(keeper.best_model_score) == max(returns)
    assert best["global_step"] == 8 * (returns.index(max(returns)) + 1) and last["global_step"] == 40
    record = {"env_id": "CartPole-v1", "obs_dim": 4, "n_actions": 2, "max_episode_steps": 40, "context_window": 32}
    assert best["environment"] == last["environment"] == record
    # the control: Lightning's own ModelCheckpoint gives the warning on the same save, BatchCheckpoint does not
    module = cli.trainer.lightning_module
    for kind, warns in ((BatchCheckpoint, False), (ModelCheckpoint, True)):
        recwarn.clear()
        callback = kind(dirpath=tmp_path / kind.__name__, every_n_train_steps=1, save_top_k=-1)
        callback.on_train_batch_end(cli.trainer, module, None, None, 0)
        assert bool([w for w in recwarn if re.match(MANUAL_OPTIMIZATION_WARNING, str(w.message))]) == warns, kind
        assert len(list((tmp_path / kind.__name__).glob("*.ckpt"))) == 1


def test_resuming_ignores_a_newer_best_checkpoint(tmp_path):
    """``--ckpt_path last`` resumes from the run's newest state, never from ``best.ckpt`` (often older)."""
    from lightning.pytorch import Trainer

    from emotion_rl.checkpoint import BatchCheckpoint, find_last_checkpoint

    trainer = Trainer(
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[
            BatchCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True, save_top_k=0),
            BatchCheckpoint(dirpath=tmp_path, monitor="val/return_mean", mode="max", filename="best"),
        ],
    )
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0), tmp_path / "last.ckpt")
    time.sleep(0.01)
    AtomicCheckpointIO().save_checkpoint(_checkpoint(2.0), tmp_path / "best.ckpt")
    assert find_last_checkpoint(trainer) == tmp_path / "last.ckpt"
