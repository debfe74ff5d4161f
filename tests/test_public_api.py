"""The public import paths: what a TorchRL user imports from the top level, and the deprecated ``emotion_rl.envs``."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torchrl.envs import Compose, GymEnv, InitTracker, TransformedEnv

import emotion_rl
from emotion_rl.data import envs as data_envs


def test_a_torchrl_user_runs_the_policy_on_their_own_env_with_top_level_imports_only():
    from emotion_rl import EmotionMCTS, EmotionModel, EmotionPolicy, PreviousReward

    assert PreviousReward is data_envs.PreviousReward and "PreviousReward" in emotion_rl.__all__
    env = TransformedEnv(GymEnv("CartPole-v1"), Compose(InitTracker(), PreviousReward()))
    env.set_seed(0)
    torch.manual_seed(0)
    model = EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2, context_window=16)
    policy = EmotionPolicy(model, EmotionMCTS(num_simulations=3), greedy=True, action_spec=env.action_spec)
    steps = env.rollout(5, policy, break_when_any_done=False)
    assert steps["action"].shape == (5, 2) and steps["policy_target"].shape == (5, 8)


def test_every_top_level_name_is_importable():
    missing = [name for name in emotion_rl.__all__ if not hasattr(emotion_rl, name)]
    assert not missing, f"in emotion_rl.__all__ but not importable: {missing}"


@pytest.fixture
def unimported_alias():
    """``emotion_rl.envs`` as if never imported in this process (its warning fires on the first import)."""
    saved = sys.modules.pop("emotion_rl.envs", None)
    yield
    if saved is not None:
        sys.modules["emotion_rl.envs"] = saved


def test_the_old_envs_path_reexports_the_new_module_and_warns_once_naming_it(unimported_alias):
    with pytest.warns(FutureWarning, match=r"emotion_rl\.envs is deprecated: import from emotion_rl\.data\.envs") as w:
        from emotion_rl.envs import make_env
    assert len([x for x in w if issubclass(x.category, FutureWarning)]) == 1
    assert make_env is data_envs.make_env
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second import is silent
        from emotion_rl import envs as alias
        from emotion_rl.envs import probe_env
    assert probe_env is data_envs.probe_env
    assert alias.__all__ == data_envs.__all__, "the alias must re-export every public name of emotion_rl.data.envs"
    assert all(getattr(alias, name) is getattr(data_envs, name) for name in data_envs.__all__)
