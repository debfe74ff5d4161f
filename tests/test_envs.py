"""Environments: the previous-reward transform, batched env transitions, probing (decision 12)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from torchrl.envs import Compose, GymEnv, InitTracker, TransformedEnv

from emotion_rl.cli import main
from emotion_rl.data.envs import EnvConstructionError, MissingDependencyError, PreviousReward, make_env, probe_env

from fakes import COUNTER_ID, IMAGE_ID, MODULE_ID, UNBOUNDED_ID


def test_previous_reward_carries_the_last_reward_to_the_next_root_and_zero_after_reset():
    env = make_env(COUNTER_ID, num_envs=3, seed=0)
    assert "prev_reward" in env.observation_spec.keys()
    td = env.rollout(40, break_when_any_done=False)
    is_init = td["is_init"][..., 0]
    prev_reward, reward = td["prev_reward"][..., 0], td["next", "reward"][..., 0]
    assert is_init[:, 1:].any(), "the rollout must contain partial resets"
    assert (prev_reward[is_init] == 0).all()
    following = ~is_init[:, 1:]
    assert torch.equal(prev_reward[:, 1:][following], reward[:, :-1][following])
    assert reward.unique().numel() > 3  # the counter env's rewards differ from step to step


def test_previous_reward_on_a_plain_gym_env():
    env = TransformedEnv(GymEnv(COUNTER_ID), Compose(InitTracker(), PreviousReward()))
    env.set_seed(1)
    td = env.rollout(20, break_when_any_done=False)
    is_init = td["is_init"][:, 0]
    assert is_init[1:].any() and (td["prev_reward"][is_init] == 0).all()
    following = ~is_init[1:]
    assert torch.equal(td["prev_reward"][1:][following], td["next", "reward"][:-1][following])
    assert (td["prev_reward"][1:][following] != 0).all()


def test_make_env_transitions_are_consistent_for_batched_cartpole():
    env = make_env("CartPole-v1", num_envs=3, seed=0)
    td = env.rollout(120, break_when_any_done=False)
    done = td["next", "done"][..., 0]
    assert done[:, :-1].any()
    following = ~done[:, :-1]
    assert torch.equal(td["next", "observation"][:, :-1][following], td["observation"][:, 1:][following])
    assert (td["next", "reward"] == 1).all()  # no fake zero-reward step after an autoreset
    starts = td["observation"][td["is_init"][..., 0]]
    assert (starts.abs() <= 0.05).all()  # every episode starts in CartPole's reset range
    assert (td["next", "observation"][done].abs().sum(-1) > 0).all()  # real terminal observations, not fillers


def test_make_env_seeding_is_deterministic():
    first = make_env("CartPole-v1", num_envs=2, seed=3).reset()["observation"]
    again = make_env("CartPole-v1", num_envs=2, seed=3).reset()["observation"]
    other = make_env("CartPole-v1", num_envs=2, seed=4).reset()["observation"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])


def test_make_env_refuses_unsupported_spaces_naming_the_env():
    with pytest.raises(ValueError, match=r"Pendulum-v1.*Box.*Discrete"):
        make_env("Pendulum-v1")
    with pytest.raises(ValueError, match=r"Image-v0.*1-D continuous Box"):
        make_env(IMAGE_ID)
    with pytest.raises(ValueError, match="unknown gymnasium env id"):
        make_env("NoSuchEnv-v0")


def test_probe_env_reports_sizes_and_the_episode_limit():
    info = probe_env("CartPole-v1")
    assert (info.obs_dim, info.n_actions, info.max_episode_steps) == (4, 2, 500)
    assert probe_env("CartPole-v1", max_episode_steps=50).max_episode_steps == 50
    with pytest.raises(ValueError, match=r"Unbounded-v0.*max_episode_steps"):
        probe_env(UNBOUNDED_ID)
    assert probe_env(UNBOUNDED_ID, max_episode_steps=9).max_episode_steps == 9


def test_max_episode_steps_override_truncates_the_episodes():
    env = make_env("CartPole-v1", num_envs=1, seed=0, max_episode_steps=5)
    td = env.rollout(12, lambda td: td.set("action", torch.tensor([[1, 0]])), break_when_any_done=False)
    assert td["step_count"][..., 0].max() <= 4
    assert td["next", "truncated"].any()


def test_env_kwargs_and_wrappers_reach_the_gymnasium_env():
    # CounterEnv's observation[1] is the episode's planned length, drawn from 2 .. max_length - 1
    short = make_env(COUNTER_ID, num_envs=2, seed=0, env_kwargs={"max_length": 3})
    planned = short.rollout(20, break_when_any_done=False)["observation"][..., 1]
    assert planned.eq(2).all(), "env_kwargs did not reach gymnasium.make"
    doubled = make_env(
        COUNTER_ID, num_envs=2, seed=0, env_kwargs={"max_length": 3}, env_wrappers=["fakes.DoubleObservation"]
    )
    assert doubled.rollout(20, break_when_any_done=False)["observation"][..., 1].eq(4).all(), (
        "the wrapper was not applied"
    )
    assert probe_env("CartPole-v1", env_kwargs={"max_episode_steps": 7}).max_episode_steps == 7
    steps = make_env("CartPole-v1", 1, seed=0, env_kwargs={"max_episode_steps": 7}).rollout(
        20, lambda td: td.set("action", torch.tensor([[1, 0]])), break_when_any_done=False
    )
    assert steps["step_count"].max() <= 6 and steps["next", "truncated"].any()


def test_module_colon_env_id_imports_the_module_that_registers_the_env():
    info = probe_env(MODULE_ID)
    assert (info.env_id, info.obs_dim, info.n_actions, info.max_episode_steps) == (MODULE_ID, 2, 2, 6)
    assert make_env(MODULE_ID, num_envs=2, seed=0).rollout(3)["observation"].shape[-1] == 2
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        probe_env("no_such_module:Env-v0")


def test_a_torchrl_env_factory_gives_sizes_from_its_specs_and_a_time_limit():
    info = probe_env("ignored", 5, env_factory="fakes:make_countdown", env_kwargs={"n_actions": 3})
    assert (info.env_id, info.obs_dim, info.n_actions, info.max_episode_steps) == ("fakes:make_countdown", 3, 3, 5)
    with pytest.raises(ValueError, match=r"make_countdown.*no time limit"):
        probe_env("ignored", env_factory="fakes:make_countdown")
    env = make_env("ignored", 2, seed=0, max_episode_steps=3, env_factory="fakes:make_countdown")
    steps = env.rollout(12, break_when_any_done=False)
    assert steps["step_count"].max() <= 2 and steps["next", "truncated"].any()  # the time limit truncates
    with pytest.raises(ValueError, match="not a TorchRL EnvBase"):
        probe_env("ignored", 5, env_factory="fakes:CounterEnv")


def test_a_missing_optional_dependency_names_the_extra_in_one_line():
    if importlib.util.find_spec("Box2D") is not None:
        pytest.skip("Box2D is installed")
    with pytest.raises(MissingDependencyError, match=r'pip install -e "\.\[box2d\]"') as raised:
        probe_env("LunarLander-v3")
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)


@pytest.mark.parametrize("name", ["cartpole", "acrobot", "mountaincar", "lunarlander"])
def test_the_shipped_configs_build_their_env_and_a_missing_extra_is_one_line_from_the_cli(name, capsys):
    """Each config merged with configs/base.yaml (its ``__include__``) builds: env, datamodule and agent."""
    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    if name == "lunarlander" and importlib.util.find_spec("Box2D") is None:
        with pytest.raises(SystemExit) as exited:
            main([f"--config={config}"], run=False)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
        assert 'pip install -e ".[box2d]"' in err
        return
    cli = main([f"--config={config}", "--trainer.logger=false"], run=False)
    env_ids = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1", "mountaincar": "MountainCar-v0"}
    env_id = env_ids.get(name, "LunarLander-v3")
    assert cli.datamodule.env_id == env_id and cli.model.hparams.obs_dim == cli.datamodule.obs_dim
    agent = cli.model  # the base's learning options reach every environment's agent
    assert agent.planner.q_transform == "minmax_completed" and agent.hparams.gradient_clip_val == 1
    assert agent.losses.value.imagined_weight == 1 and agent.losses.dynamics.all_emotions
    assert not agent.losses.action.update_transformer
    assert cli.datamodule.window_weighting == "uniform"


class NoArgumentsEnv(gymnasium.Env):
    """No ``__init__``: its constructor takes no arguments (TorchRL's ``GymEnv`` probes it with ``frameskip``)."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(3, self.t / 10, np.float32), 1.0 + int(action), self.t >= 4, False, {}


class NoKeywordsEnv(NoArgumentsEnv):
    def __init__(self) -> None:  # takes no keyword arguments
        super().__init__()


class BrokenEnv(NoArgumentsEnv):
    def __init__(self, **kwargs) -> None:
        raise RuntimeError("no licence file")


NO_ARGUMENTS_ID, NO_KEYWORDS_ID, BROKEN_ID = (
    "EmotionRLTest/NoArguments-v0",
    "EmotionRLTest/NoKeywords-v0",
    "EmotionRLTest/Broken-v0",
)
for env_id, entry_point in [(NO_ARGUMENTS_ID, NoArgumentsEnv), (NO_KEYWORDS_ID, NoKeywordsEnv), (BROKEN_ID, BrokenEnv)]:
    gymnasium.register(env_id, entry_point=entry_point, max_episode_steps=6)


def _one_line(raised: pytest.ExceptionInfo) -> str:
    message = str(raised.value)
    assert isinstance(raised.value, ValueError) and "\n" not in message and raised.value.__suppress_context__
    assert "frameskip" not in message, "TorchRL's frameskip probe leaked into the message"
    return message


@pytest.mark.parametrize("env_id", [NO_ARGUMENTS_ID, NO_KEYWORDS_ID])
def test_an_env_whose_constructor_takes_no_arguments_is_made(env_id):
    info = probe_env(env_id)
    assert (info.obs_dim, info.n_actions, info.max_episode_steps) == (3, 2, 6)
    steps = make_env(env_id, num_envs=2, seed=0).rollout(5, break_when_any_done=False)
    assert steps["next", "observation"].shape == (2, 5, 3) and steps["next", "done"][:, 3].all()


def test_env_construction_errors_are_one_line_naming_the_env_the_cause_and_the_fix():
    with pytest.raises(EnvConstructionError) as raised:
        make_env(NO_KEYWORDS_ID, env_kwargs={"size": 3})
    message = _one_line(raised)
    assert NO_KEYWORDS_ID in message and "unexpected keyword argument 'size'" in message
    assert "remove 'size' from env_kwargs {'size': 3} (data.env_kwargs)" in message
    with pytest.raises(EnvConstructionError) as raised:
        probe_env(NO_ARGUMENTS_ID, env_kwargs={"size": 3})
    assert "NoArgumentsEnv() takes no arguments; remove env_kwargs {'size': 3}" in _one_line(raised)
    with pytest.raises(EnvConstructionError) as raised:
        make_env(BROKEN_ID)
    message = _one_line(raised)
    assert BROKEN_ID in message and "RuntimeError: no licence file; raised at test_envs.py:" in message
    with pytest.raises(EnvConstructionError) as raised:
        make_env(NO_ARGUMENTS_ID, env_wrappers=["gymnasium.wrappers.ClipAction"])
    assert "(wrapper gymnasium.wrappers.ClipAction): TypeError: ClipAction requires a Box" in _one_line(raised)
    with pytest.raises(EnvConstructionError) as raised:
        probe_env("ignored", 5, env_factory="fakes:make_countdown", env_kwargs={"n_action": 3})
    message = _one_line(raised)
    assert "env 'fakes:make_countdown' could not be made (env_factory)" in message and "remove 'n_action'" in message
