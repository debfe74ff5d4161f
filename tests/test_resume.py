"""Exact resume (issue "Nothing lost"): a run of N batches equals N/2 batches, a checkpoint, and N/2 more.

A resumed run restarts its environments: TorchRL has no API to save an environment mid-episode, so the resumed
stream starts fresh episodes (README, "Resuming"). Exact equality of a whole run therefore needs the stream's state
to be entirely in the checkpoint at the moment it is written, which holds when every collection ends with every
episode finished and the env's reset does not depend on its seed. ``CounterEnv`` with ``max_length=3`` plays
episodes of exactly 2 steps and resets to ``[0, 2]``; with 2 envs and 4 frames per collection each collection is
one whole episode per env. Everything else is the real thing: the collector, the replay (its sampling generator),
the policy's emotion and action draws (its generator), the temperature schedule (decaying over the run), the four
Adam optimizers, Lightning's loop counters, the checkpoint written by ``ModelCheckpoint`` through
``AtomicCheckpointIO`` and read back with ``weights_only=True``. Any of them not restored makes the runs differ.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from emotion_rl import DynamicsLoss, EmotionAgent, EmotionDataModule, EmotionMCTS, ValueLoss
from emotion_rl.checkpoint import AtomicCheckpointIO, load_checkpoint
from emotion_rl.cli import main

from conftest import CONFIG
from fakes import register_counter

ENV = register_counter("ResumeCounter-v0", time_limit=4, max_length=3)  # every episode is 2 steps long
BATCHES = 6  # N; the checkpoint is written after N/2


def _build(seed: int = 0) -> tuple[EmotionAgent, EmotionDataModule]:
    L.seed_everything(seed, verbose=False)
    data = EmotionDataModule(
        ENV, num_envs=2, frames_per_batch=4, batch_size=3, updates_per_collection=1, warmup_episodes=2, seed=seed
    )
    agent = EmotionAgent(
        data.obs_dim,
        data.n_actions,
        data.max_episode_steps,
        d_model=16,
        n_layers=1,
        n_heads=2,
        planner=EmotionMCTS(4),
        temperature_decay_frames=40,  # the temperature moves during the run: its position must be restored
        dynamics_loss=partial(DynamicsLoss, action_input="taken"),
        value_loss=partial(ValueLoss, return_scale=0.01),
    )
    return agent, data


def _trainer(root: Path, batches: int, every: int | None = None) -> L.Trainer:
    callbacks = []
    if every is not None:
        callbacks.append(ModelCheckpoint(dirpath=root, every_n_train_steps=4 * every, save_top_k=-1))
    return L.Trainer(
        default_root_dir=root,
        max_steps=4 * batches,  # four optimizer steps per batch
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The uninterrupted run (writing its checkpoint at N/2) and the run resumed from that checkpoint."""
    root = tmp_path_factory.mktemp("resume")
    agent, data = _build()
    _trainer(root / "full", BATCHES, every=BATCHES // 2).fit(agent, datamodule=data)
    checkpoint = root / "full" / f"epoch=0-step={4 * (BATCHES // 2)}.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in (root / "full").iterdir())

    resumed_agent, resumed_data = _build()
    L.seed_everything(1234, verbose=False)  # the resumed process starts from another global RNG state
    trainer = _trainer(root / "resumed", BATCHES)
    trainer.fit(resumed_agent, datamodule=resumed_data, ckpt_path=checkpoint)
    return {
        "full": (agent, data),
        "resumed": (resumed_agent, resumed_data, trainer),
        "checkpoint": checkpoint,
    }


def test_n_batches_equal_half_checkpoint_half_bit_for_bit(runs):
    (agent, _), (resumed, _, trainer) = runs["full"], runs["resumed"]
    assert trainer.global_step == 4 * BATCHES
    full_state, resumed_state = agent.state_dict(), resumed.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key, value in full_state.items():
        assert torch.equal(value, resumed_state[key]), f"parameter {key} differs after resuming"


def test_optimizer_states_continue_exactly(runs):
    (agent, _), (resumed, _, _) = runs["full"], runs["resumed"]
    for full_opt, resumed_opt in zip(
        agent.optimizers(use_pl_optimizer=False), resumed.optimizers(use_pl_optimizer=False), strict=True
    ):
        a, b = full_opt.state_dict(), resumed_opt.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for index, state in a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b["state"][index][name]), f"Adam {name} of parameter {index} differs"


def test_the_data_stream_continues_exactly(runs):
    (_, data), (_, resumed, _) = runs["full"], runs["resumed"]
    assert (resumed.env_steps, resumed.episodes) == (data.env_steps, data.episodes)
    assert len(resumed.replay) == len(data.replay)
    full_replay, resumed_replay = data.replay.storage[:], resumed.replay.storage[:]
    assert (full_replay == resumed_replay).all(), "the replay storages hold different steps"
    assert data.replay.cursor == resumed.replay.cursor
    assert torch.equal(data.policy_rng.get_state(), resumed.policy_rng.get_state())
    assert torch.equal(data.replay.generator.get_state(), resumed.replay.generator.get_state())


def test_the_checkpoint_holds_what_resuming_needs(runs):
    checkpoint = load_checkpoint(runs["checkpoint"])  # weights_only=True
    state = checkpoint["EmotionDataModule"]
    assert state["env_steps"] == 4 * (BATCHES // 2)  # one collection per batch (the first also fills the warm-up)
    assert len(checkpoint["optimizer_states"]) == 4
    assert state["replay"]["generator"] is not None, "the replay's sampling generator is not saved"
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert checkpoint["global_step"] == 4 * (BATCHES // 2)


# ---------------------------------------------------------------------------------------------------- SIGKILL
FAST = """
trainer:
  val_check_interval: 1000
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 8, save_last: true, save_top_k: -1}
model: {d_model: 16, n_layers: 1, n_heads: 2, planner: {init_args: {num_simulations: 3}}}
data: {num_envs: 2, frames_per_batch: 16, updates_per_collection: 1, batch_size: 2, warmup_episodes: 2,
       val_episodes: 2, time_limit: 40}
"""


def test_a_run_killed_with_sigkill_resumes_with_ckpt_path_last_and_loses_nothing_checkpointed(tmp_path, capsys):
    """``fit`` in its own process, SIGKILLed after its third checkpoint; ``fit --ckpt_path last`` (same config,
    same logger settings, so the new run logs to ``version_1``) continues from ``version_0``'s ``last.ckpt``."""
    (tmp_path / "fast.yaml").write_text(FAST)
    args = [
        f"--config={CONFIG}",
        f"--config={tmp_path / 'fast.yaml'}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    killed = subprocess.Popen(
        [sys.executable, "-m", "emotion_rl", "fit", *args, "--trainer.max_steps=4000"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = tmp_path / "cartpole" / "version_0" / "checkpoints"
    try:
        deadline = time.monotonic() + 240
        while not (first / "epoch=0-step=24.ckpt").exists():
            assert killed.poll() is None, "the training process ended before its third checkpoint"
            assert time.monotonic() < deadline, "no third checkpoint within 4 minutes"
            time.sleep(0.2)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    # The newest checkpoint on disk: last.ckpt, or epoch=0-step=N.ckpt when the kill came between the two writes.
    newest = max(first.glob("*.ckpt"), key=lambda path: (path.stat().st_mtime_ns, path.stem.startswith("last")))
    saved = load_checkpoint(newest)
    step, data = saved["global_step"], saved["EmotionDataModule"]
    assert step >= 24 and step % 8 == 0

    cli = main(["fit", *args, f"--trainer.max_steps={step + 16}", "--ckpt_path=last"])
    assert f"resuming from {newest}" in capsys.readouterr().err
    assert cli.trainer.global_step == step + 16
    resumed = load_checkpoint(tmp_path / "cartpole" / "version_1" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == step + 16
    now = resumed["EmotionDataModule"]
    assert now["env_steps"] > data["env_steps"] and now["episodes"] > data["episodes"]
    assert now["stream_starts"] == data["stream_starts"] + 1  # the resumed stream seeded its envs afresh
    # Every episode in the replay at the kill's last checkpoint is still there, in place.
    before, after = data["replay"], now["replay"]  # far below replay_capacity: nothing was evicted
    position = {slot: row for row, slot in enumerate(after["slots"].tolist())}
    rows = torch.tensor([position[slot] for slot in before["slots"].tolist()])
    for key, value in before["steps"].items():
        assert torch.equal(after["steps"][key][rows], value), key
    # The optimizers went on from their saved state (Adam's step count), not from scratch.
    assert resumed["optimizer_states"][0]["state"][0]["step"] == saved["optimizer_states"][0]["state"][0]["step"] + 4


def test_a_model_whose_context_is_shorter_than_the_episodes_is_refused_before_training(tmp_path):
    """Built by hand (the CLI links the env's time limit into the model, so it cannot mismatch there)."""
    L.seed_everything(0, verbose=False)
    data = EmotionDataModule(ENV, num_envs=2, frames_per_batch=4, batch_size=2, warmup_episodes=2, time_limit=12)
    agent = EmotionAgent(data.obs_dim, data.n_actions, max_episode_steps=5, d_model=16, n_layers=1, n_heads=2)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    trainer = _trainer(tmp_path, batches=2)
    with pytest.raises(ValueError, match=r"histories of up to 5 steps but ResumeCounter-v0's episodes last up to 12"):
        trainer.fit(agent, datamodule=data)
    assert trainer.global_step == 0 and data.env_steps == 0
    assert all(torch.equal(v, before[k]) for k, v in agent.state_dict().items())
