"""Scale-out on existing engines: TorchRL's MultiCollector worker processes and Lightning's DDP strategy (on CPU)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from torchrl.collectors import MultiCollector

from emotion_rl.cli import main

from conftest import CONFIG

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "planner": {"init_args": {"num_simulations": 3}}},
    "data": {
        "num_envs": 2,
        "frames_per_batch": 16,
        "updates_per_collection": 1,  # one collection (and one weight update to the workers) per batch
        "batch_size": 2,
        "warmup_episodes": 2,
        "time_limit": 40,
    },
}


def _overlay(tmp_path: Path, callbacks: str = "") -> str:
    model = ", ".join(f"{k}: {v}" for k, v in TINY["model"].items())
    data = ", ".join(f"{k}: {v}" for k, v in TINY["data"].items())
    path = tmp_path / "overlay.yaml"
    path.write_text(
        f"trainer:\n  val_check_interval: 1000\n  callbacks:{callbacks or ' []'}\n"
        f"model: {{{model}}}\ndata: {{{data}}}\n"
    )
    return str(path)


def test_fit_collects_with_worker_processes_and_sends_them_the_weights(tmp_path, monkeypatch):
    updates: list[int] = []
    original = MultiCollector.update_policy_weights_

    def counting(self, *args, **kwargs):
        updates.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiCollector, "update_policy_weights_", counting)
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            f"--config={_overlay(tmp_path)}",
            "--data.collector_workers=2",
            "--trainer.max_steps=16",  # 4 batches
            "--trainer.log_every_n_steps=1",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 16
    data = cli.datamodule
    assert data.env_steps >= 16 * 4 and data.env_steps % 16 == 0  # whole collections of 16 frames
    assert len(data.replay) >= 2
    assert len(updates) >= 3, "the learner's weights were not sent to the workers after its updates"
    rows = (tmp_path / "cartpole" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [r.split(",")[header.index("train/phase3_value_loss")] for r in rows[1:]]
    assert any(v and math.isfinite(float(v)) for v in losses)


def test_ddp_on_two_cpu_processes_keeps_parameters_identical_and_each_rank_collects_its_own_data(tmp_path):
    """``--trainer.strategy ddp_find_unused_parameters_true --trainer.accelerator cpu --trainer.devices 2``, end to
    end in its own process (Lightning's launcher starts the second rank by re-running the command)."""
    report = f"\n    - class_path: fakes.RankReport\n      init_args: {{folder: {tmp_path}}}"
    command = [
        sys.executable,
        "-m",
        "emotion_rl",
        "fit",
        f"--config={CONFIG}",
        f"--config={_overlay(tmp_path, report)}",
        "--trainer.strategy=ddp_find_unused_parameters_true",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_steps=16",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]  # this checkout's code, and fakes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [16, 16]
    for key, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][key]), f"{key} differs between the ranks"
    first = [r["observations"][0, 0] for r in ranks]
    assert not torch.equal(*first), "both ranks collected the same episodes (same env seed)"
