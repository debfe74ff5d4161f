"""The trained CartPole model shipped in models/ loads safely and balances the pole."""

from __future__ import annotations

from pathlib import Path

import torch

from emotion_rl.data.envs import make_env
from emotion_rl.data.rollout import evaluate_policy
from emotion_rl.viz import load_agent

MODEL = Path(__file__).resolve().parents[1] / "models" / "cartpole.ckpt"


def test_the_shipped_cartpole_model_loads_with_weights_only_and_balances():
    checkpoint = torch.load(MODEL, weights_only=True)
    assert "optimizer_states" not in checkpoint and "EmotionDataModule" not in checkpoint  # weights only: small
    agent = load_agent(MODEL)
    result = evaluate_policy(make_env("CartPole-v1", 2, seed=12345), agent.make_policy(greedy=True), 150)
    assert torch.equal(result["episode_length"], torch.tensor([150, 150]))  # an untrained agent falls within ~40
