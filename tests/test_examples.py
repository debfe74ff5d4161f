"""The examples run: examples/train_minimal.py trains the shipped agent without Lightning (tiny settings)."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--time-limit=12",
    "--collections=6",
    "--num-envs=2",
    "--frames-per-batch=16",
    "--updates-per-collection=2",
    "--batch-size=4",
    "--warmup-episodes=2",
    "--simulations=3",
    "--d-model=16",
    "--n-layers=1",
    "--n-heads=2",
]


def test_train_minimal_trains_every_head_with_finite_losses():
    result = runpy.run_path(str(ROOT / "examples" / "train_minimal.py"))["main"]([*TINY, "--seed=3"])
    assert result["env_steps"] == 6 * 16
    assert result["losses"], "no update ran"
    assert set(result["losses"][0]) == {"dynamics", "action", "value", "policy"}
    assert all(math.isfinite(v) for logs in result["losses"] for v in logs.values())
    model, initial = result["model"], result["initial_parameters"]
    groups = {"transformer": model.transformer_parameters(), **model.head_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group, params in groups.items():
        assert any(not torch.equal(p.detach(), initial[names[id(p)]]) for p in params), f"{group} did not change"


def test_train_minimal_trains_the_shipped_agent():
    """Its agent, built from Python objects, is the one configs/cartpole.yaml builds (diagnostics aside: the example
    logs nothing), so the example cannot drift from the shipped setup unnoticed."""
    from emotion_rl.cli import main
    from emotion_rl.data.envs import probe_env

    example = runpy.run_path(str(ROOT / "examples" / "train_minimal.py"))
    agent = example["make_agent"](example["parse_args"]([]), probe_env("CartPole-v1"))
    shipped = main([f"--config={ROOT / 'configs' / 'cartpole.yaml'}", "--trainer.logger=false"], run=False).model
    logging_only = ("log_diagnostics", "diagnostics_interval")
    mine = {k: v for k, v in agent.hparams.items() if k not in logging_only}
    assert mine == {k: v for k, v in shipped.hparams.items() if k not in logging_only}
