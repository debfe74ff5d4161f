"""``EmotionAgent.load`` and ``predict``: the shipped CartPole model in a plain gymnasium loop, over one env and over
four, scores as ``validate`` scores it; the state, the reward keyword and the refusals."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl._utils import seed_generator

from emotion_rl import EmotionAgent
from emotion_rl.checkpoint import CheckpointError
from emotion_rl.cli import main
from emotion_rl.data.envs import NonFiniteError, make_env
from emotion_rl.data.rollout import play
from emotion_rl.env_record import EnvironmentRecord

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "cartpole.ckpt"


@pytest.fixture(scope="module")
def agent() -> EmotionAgent:
    return EmotionAgent.load(SHIPPED)


def torchrl_start_seeds(seed: int, n: int) -> list[int]:
    """The seeds TorchRL's ``make_env(env_id, n, seed)`` gives its gymnasium envs (``SerialEnv.set_seed`` chains
    them). Each env is reset with its seed, then reset again by the rollout: the first episode starts from the
    second reset."""
    seeds = [seed]
    for _ in range(n - 1):
        seeds.append(seed_generator(seeds[-1]))
    return seeds


def play_first_episodes(agent: EmotionAgent, envs: gym.vector.VectorEnv, seeds: list[int]) -> dict[str, np.ndarray]:
    """Each env's first episode, through ``predict``: the loop a stable-baselines3 user writes."""
    envs.reset(seed=seeds)
    obs, _ = envs.reset()  # the episode TorchRL's evaluation plays (see torchrl_start_seeds)
    n = len(seeds)
    returns, lengths, finished = np.zeros(n), np.zeros(n, dtype=int), np.zeros(n, dtype=bool)
    state, reward, starts, actions = None, None, None, []
    while not finished.all():
        action, state = agent.predict(obs, state, episode_start=starts, reward=reward)
        actions.append(action)
        obs, reward, terminated, truncated, _ = envs.step(action)
        returns += np.where(finished, 0.0, reward)
        lengths += ~finished
        starts = terminated | truncated  # SAME_STEP autoreset: obs is already the next episode's first
        finished |= starts
    return {"return": returns, "length": lengths, "actions": np.stack(actions)}


def test_load_gives_the_checkpoints_own_agent_in_eval_mode(agent):
    assert not agent.training and agent.device.type == "cpu"
    assert agent.env_record == EnvironmentRecord("CartPole-v1", 4, 2, 500, 32)  # read from the old checkpoint
    saved = torch.load(SHIPPED, weights_only=True)
    expected = {k: v for k, v in saved["hyper_parameters"].items() if k != "_instantiator"}
    # settings added after the checkpoint was written take their defaults
    expected["value_loss"]["init_args"]["target"]["init_args"].setdefault("bootstrap_truncation", False)
    expected["dynamics_loss"]["init_args"].setdefault("imagined_weight", 0.0)
    assert dict(agent.hparams) == expected
    assert agent.model.context_window == 32  # the checkpoint's, not max_episode_steps (501 positions)
    for key, value in saved["state_dict"].items():
        assert torch.equal(agent.state_dict()[key], value), key


def test_predict_over_four_envs_scores_as_validate_reports(agent, tmp_path, monkeypatch):
    """``validate --ckpt_path models/cartpole.ckpt`` without a config (the checkpoint's own settings) plays 4 greedy
    episodes; ``predict`` in a gymnasium vector env from the same 4 start states scores the same."""
    monkeypatch.chdir(tmp_path)
    cli = main(["validate", f"--ckpt_path={SHIPPED}", "--data.val_episodes=4", "--trainer.logger=false"])
    metrics = cli.trainer.callback_metrics
    seeds = torchrl_start_seeds(cli.datamodule.seed + 10_000, 4)  # the evaluation envs' seed (EmotionDataModule)
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1")] * 4, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    try:
        played = play_first_episodes(agent, envs, seeds)
    finally:
        envs.close()
    assert played["return"].mean() == pytest.approx(float(metrics["val/return_mean"]))
    assert played["return"].std() == pytest.approx(float(metrics["val/return_std"]), abs=1e-4)
    assert played["length"].mean() == pytest.approx(float(metrics["val/length_mean"]))
    assert played["return"].min() >= 400  # it balances (an untrained agent falls within ~40 steps)


def test_predict_on_one_env_takes_the_actions_of_the_torchrl_evaluation_policy(agent):
    """One unbatched observation at a time: the same actions, step for step, as the greedy policy ``validate`` runs
    (``make_policy(greedy=True)`` in TorchRL's rollout) from the same start."""
    seed, limit = 10_005, 150
    steps = play(make_env("CartPole-v1", 1, seed=seed, max_episode_steps=limit), agent.make_policy(greedy=True), limit)
    expected = steps["action"].argmax(-1).reshape(-1).numpy()
    env = gym.make("CartPole-v1", max_episode_steps=limit)
    env.reset(seed=seed)
    obs, _ = env.reset()
    state, reward, done, actions, total = None, None, False, [], 0.0
    while not done:
        action, state = agent.predict(obs, state, reward=reward)
        assert action.shape == () and action.dtype == np.int64
        actions.append(int(action))
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done = total + reward, terminated or truncated
    np.testing.assert_array_equal(np.array(actions), expected)
    assert total == float(steps["next", "reward"].sum()) == limit


def test_episode_start_restarts_that_envs_history_and_the_reward_enters_it(agent):
    obs = np.array([[0.01, 0.0, 0.02, 0.0], [0.0, -0.01, 0.0, 0.03]])
    _, state = agent.predict(obs)
    for reward in (1.0, 0.5):
        _, state = agent.predict(obs, state, reward=np.array([reward, 2 * reward]))
    assert state.policy.history_lengths.tolist() == [3, 3]
    history = state.policy.histories()
    assert history.reward[:, :2].tolist() == [[1.0, 0.5], [2.0, 1.0]]  # r_0, r_1: what each later call brought
    _, state = agent.predict(obs, state, episode_start=np.array([True, False]), reward=np.array([7.0, 3.0]))
    assert state.policy.history_lengths.tolist() == [1, 4]
    assert state.policy.histories().reward[1, 2] == 3.0


def test_deterministic_false_samples_as_training_does_from_torchs_generator(agent):
    obs = np.array([[0.02, 0.3, -0.05, -0.4]] * 3)

    def sampled(seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        actions, state = [], None
        for _ in range(6):
            action, state = agent.predict(obs, state, deterministic=False, reward=1.0 if state else None)
            actions.append(action)
        assert state.policy.temperature == agent.temperature.end  # the end of the schedule, not greedy's 0
        return np.stack(actions)

    first, again, other = sampled(0), sampled(0), sampled(1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other), "the actions do not depend on the random draws"
    greedy, state = [], None
    for _ in range(6):
        action, state = agent.predict(obs, state, reward=1.0 if state else None)
        greedy.append(action)
    greedy = np.stack(greedy)
    assert (greedy == greedy[:, :1]).all(), "greedy acting is not the same for the same history"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda a, s: a.predict(np.zeros(6)), ValueError, r"shape \(6,\); this model reads observations of size 4"),
        (lambda a, s: a.predict(np.zeros(4), s), ValueError, r"reads the reward of the previous step .*reward="),
        (lambda a, s: a.predict(np.zeros((3, 4)), s, reward=1.0), ValueError, r"holds 1 envs' histories, the obs"),
        (lambda a, s: a.predict(np.array([0, np.nan, 0, 0])), NonFiniteError, r"observation of env 0 is not finite"),
        (lambda a, s: a.predict(np.zeros(4), s, reward=np.inf), NonFiniteError, r"reward of env 0 is not finite"),
        (lambda a, s: a.predict(np.zeros(4), s, reward=[1.0, 2.0]), ValueError, r"reward has 2 values for 1 envs"),
    ],
)
def test_predict_refuses_in_one_line_before_the_history_changes(agent, call, error, message):
    _, state = agent.predict(np.zeros(4))
    with pytest.raises(error, match=message) as refused:
        call(agent, state)
    assert "\n" not in str(refused.value)
    assert state.policy.history_lengths.tolist() == [1]


def test_load_refuses_a_file_that_is_no_checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_text("not a model\n")
    with pytest.raises(CheckpointError, match=r"is not a checkpoint"):
        EmotionAgent.load(path)
