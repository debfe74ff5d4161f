"""Temperaments (``TemperamentActionLoss``, docs/training.md "Temperaments"): each emotion's own value on its own
horizon and curiosity, each head trained toward what its value prefers, the values trained and saved with the
agent, and a fit from the config."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionAgent, EmotionModel, TemperamentActionLoss
from emotion_rl.checkpoint import load_checkpoint
from emotion_rl.cli import main
from emotion_rl.losses import imagined_next

from conftest import CONFIG, TINY, random_episodes

HORIZONS = [0.5, 0.9, 0.99, 0.0] * 2


def model(n_actions: int = 3, seed: int = 0) -> EmotionModel:
    torch.manual_seed(seed)
    return EmotionModel(4, n_actions, d_model=16, n_layers=1, n_heads=2, context_window=15)


def one_episode(length: int, terminated: bool) -> TensorDict:
    """One episode of ``length`` steps, rewards 1, ending in a termination or a truncation."""
    episode = random_episodes([length], length)
    episode["reward"] = torch.ones(1, length)
    end = torch.zeros(1, length, dtype=torch.bool)
    end[0, -1] = True
    episode["done"], episode["terminated"], episode["truncated"] = end, end & terminated, end & (not terminated)
    return episode


def test_every_emotion_needs_a_horizon_and_a_curiosity_in_range():
    with pytest.raises(ValueError, match="one horizon and one curiosity per emotion"):
        TemperamentActionLoss(model(), horizons=[0.9] * 7)
    with pytest.raises(ValueError, match="horizons must be in"):
        TemperamentActionLoss(model(), horizons=[1.0] * 8)
    with pytest.raises(ValueError, match="curiosity"):
        TemperamentActionLoss(model(), horizons=[0.9] * 8, curiosity=[-0.1] * 8)


def test_the_values_learn_the_discounted_reward_of_their_own_horizon_to_a_termination():
    """lam 1 on a terminated episode of rewards 1: ``y_t^e = (1 - gamma_e) sum_k gamma_e^k = 1 - gamma_e^(T - t)``,
    whatever the value heads say (no bootstrap after a termination)."""
    loss = TemperamentActionLoss(model(), horizons=HORIZONS, lam=1.0, initial_bias=0.0)
    episode = one_episode(5, terminated=True)
    targets, novelty = loss.value_targets(episode, loss.model.encode(episode))
    steps_left = torch.arange(5, 0, -1, dtype=torch.float32).unsqueeze(-1)  # T - t
    expected = 1 - torch.tensor(HORIZONS).pow(steps_left)
    torch.testing.assert_close(targets[0], expected)
    assert novelty.shape == (1, 5) and (novelty >= 0).all() and (novelty <= 5).all()


def test_a_truncation_bootstraps_from_the_value_of_the_next_state_and_curiosity_adds_the_discounted_novelty():
    loss = TemperamentActionLoss(model(), horizons=HORIZONS, lam=1.0, initial_bias=0.0)
    episode = one_episode(4, terminated=False)
    encoding = loss.model.encode(episode)
    truncated, _ = loss.value_targets(episode, encoding)
    terminated, _ = loss.value_targets(one_episode(4, terminated=True), encoding)
    gammas = torch.tensor(HORIZONS)
    (after,) = imagined_next(loss.model, encoding, episode["next_observation"])
    boot = loss.values(after[0, 3])  # W^e of the state after the last step
    steps_left = torch.arange(4, 0, -1, dtype=torch.float32).unsqueeze(-1)
    torch.testing.assert_close(truncated[0] - terminated[0], gammas.pow(steps_left) * boot)
    curious = TemperamentActionLoss(model(), horizons=HORIZONS, curiosity=[0.5] * 8, lam=1.0, initial_bias=0.0)
    with_bonus, novelty = curious.value_targets(one_episode(4, terminated=True), encoding)
    discounted = torch.stack(
        [(novelty[0, t:] * gammas.unsqueeze(-1).pow(torch.arange(4 - t))).sum(-1) for t in range(4)]
    )
    torch.testing.assert_close(with_bonus[0] - terminated[0], 0.5 * (1 - gammas) * discounted)


def test_each_head_learns_the_action_its_own_values_prefer():
    """With ``q^e(a)`` fixed to prefer action ``(e + 1) mod A`` (against the initial lean to ``e mod A``), a few
    steps of phase 2 make every head prefer it: the target follows each emotion's values, not the others'."""
    loss = TemperamentActionLoss(model(), horizons=HORIZONS, sharpness=5.0)
    episodes = random_episodes([6, 4], 6)
    n_actions, n_emotions = 3, 8
    prefer = (torch.arange(n_emotions) + 1) % n_actions
    q = (torch.arange(n_actions).unsqueeze(-1) == prefer).float().expand(2, 6, n_actions, n_emotions)
    loss.action_values = lambda batch, encoding: (q, q.mean((-1, -2)))
    hidden = loss.model.encode(episodes).hidden.detach()
    before = loss.model.action_logits(hidden).argmax(-1)
    assert (before == torch.arange(n_emotions) % n_actions).float().mean() > 0.9  # the initial lean
    optimizer = torch.optim.Adam(loss.model.action_heads.parameters(), lr=0.05)
    for _ in range(40):
        optimizer.zero_grad()
        loss(episodes)["loss_action"].backward()
        optimizer.step()
    after = loss.model.action_logits(hidden).argmax(-1)
    assert (after == prefer).all()


def test_the_agent_trains_the_values_with_phase_2_and_saves_them(tmp_path):
    action = partial(TemperamentActionLoss, horizons=HORIZONS, curiosity=[0.0] * 4 + [0.5] * 4)
    agent = EmotionAgent(4, 3, 20, d_model=16, n_layers=1, n_heads=2, action_loss=action)
    values = list(agent.losses.action.temperament_values.parameters())
    optimizers = agent.configure_optimizers()
    in_phase = [{id(p) for group in opt.param_groups for p in group["params"]} for opt in optimizers]
    assert all(id(p) in in_phase[1] for p in values) and not any(id(p) in in_phase[2] for p in values)
    before = [p.detach().clone() for p in values]
    agent.update(random_episodes([6, 4], 6), optimizers)
    assert all(not torch.equal(a, p) for a, p in zip(before, values, strict=True)), "phase 2 moves the values"
    assert {k for k in agent.state_dict() if k.startswith("loss_heads.action.")} == {
        f"loss_heads.action.{name}" for name in ("w1", "b1", "w2", "b2")
    }
    rebuilt = EmotionAgent(**agent.hparams)
    rebuilt.load_state_dict(agent.state_dict())
    for a, b in zip(rebuilt.losses.action.temperament_values.parameters(), values, strict=True):
        assert torch.equal(a, b)


def test_temperaments_run_a_fit_from_the_config(tmp_path):
    logs = tmp_path / "runs"
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            "--model.action_loss=emotion_rl.TemperamentActionLoss",
            f"--model.action_loss.horizons={HORIZONS}",
            "--model.action_loss.curiosity=[0.0,0.0,0.0,0.0,0.5,0.5,0.5,0.5]",
            "--trainer.max_steps=8",
            f"--trainer.logger.init_args.save_dir={logs}",
        ]
    )
    assert type(cli.model.losses.action) is TemperamentActionLoss
    hparams = load_checkpoint(logs / "cartpole" / "version_0" / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert hparams["action_loss"]["init_args"]["horizons"] == HORIZONS
