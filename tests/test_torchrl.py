"""EmotionPolicy for other TorchRL agents: any batched env, any collector, worker processes, weight updates."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector, MultiCollector
from torchrl.envs import Compose, GymEnv, InitTracker, ParallelEnv, SerialEnv, StepCounter, TransformedEnv

from emotion_rl import EmotionMCTS, EmotionModel, EmotionPolicy
from emotion_rl.data.envs import PreviousReward

ROOT = Path(__file__).resolve().parents[1]


def cartpole(num_envs: int | None = None, categorical: bool = False) -> TransformedEnv:
    """CartPole with the two transforms the policy reads (plus a step counter the tests check histories against)."""
    kwargs = {"categorical_action_encoding": categorical}
    base = GymEnv("CartPole-v1", num_envs=num_envs, **kwargs) if num_envs else GymEnv("CartPole-v1", **kwargs)
    return TransformedEnv(base, Compose(InitTracker(), PreviousReward(), StepCounter()))


def serial() -> SerialEnv:
    return SerialEnv(2, cartpole)


def parallel() -> ParallelEnv:
    return ParallelEnv(2, cartpole)


class LengthRecorder(EmotionMCTS):
    """The real planner, recording the length of every history it is given."""

    def __init__(self) -> None:
        super().__init__(num_simulations=3)
        self.lengths: list[torch.Tensor] = []

    def search(self, model, history, generator=None, explore=False) -> TensorDict:
        self.lengths.append(history.get("mask").sum(-1).reshape(-1).clone())
        return super().search(model, history, generator, explore)


def tiny_model() -> EmotionModel:
    torch.manual_seed(0)
    return EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2, context_window=500)


@pytest.mark.parametrize(
    ("make_env", "categorical"),
    [
        (cartpole, False),
        (lambda: cartpole(categorical=True), True),
        (lambda: cartpole(num_envs=3), False),
        (serial, False),
        (parallel, False),
    ],
    ids=["GymEnv", "GymEnv-categorical", "GymEnv-num_envs", "SerialEnv", "ParallelEnv"],
)
def test_any_collector_runs_the_policy_and_each_env_history_restarts_at_its_episode_start(make_env, categorical):
    """At every step of every env, the planner's history holds exactly the steps of the current episode."""
    env = make_env()
    planner = LengthRecorder()
    policy = EmotionPolicy(
        tiny_model(), planner, action_spec=env.action_spec, generator=torch.Generator().manual_seed(0)
    )
    collector = Collector(env, policy, frames_per_batch=60, total_frames=120)
    batches = [batch for batch in collector]
    collector.shutdown()
    planner.lengths = planner.lengths[1:]  # the collector's construction-time probe of the policy's outputs
    batch = torch.cat(batches, -1)
    steps = batch["step_count"].reshape(*batch.batch_size)
    steps = steps.reshape(-1, steps.shape[-1]) if steps.ndim > 1 else steps.unsqueeze(0)  # [envs, time]
    seen = torch.stack(planner.lengths, -1).reshape(steps.shape)
    assert torch.equal(seen, steps + 1), "a history did not match its episode (not reset at is_init, or leaked)"
    assert bool(batch["is_init"].any()) and int(steps.max()) > 5, "the check needs episode starts and long episodes"
    action = batch["action"]
    assert action.shape == ((*batch.batch_size,) if categorical else (*batch.batch_size, 2))
    assert {"emotion", "policy_target", "visit_counts"} <= set(batch.keys())
    torch.testing.assert_close(batch["policy_target"].sum(-1), torch.ones(batch.batch_size))


def test_an_env_the_policy_cannot_drive_fails_at_construction_naming_what_is_supported():
    pendulum = TransformedEnv(GymEnv("Pendulum-v1"), Compose(InitTracker(), PreviousReward()))
    with pytest.raises(ValueError, match=r"discrete action spaces only.*Bounded.*supported: a Discrete action space"):
        EmotionPolicy(tiny_model(), EmotionMCTS(num_simulations=3), action_spec=pendulum.action_spec)
    policy = EmotionPolicy(tiny_model(), EmotionMCTS(num_simulations=3))
    with pytest.raises(ValueError, match="discrete action spaces only"):
        policy.action_spec = pendulum.action_spec


def _favour(model: EmotionModel, action: int) -> None:
    """Make every emotion's action head pick ``action`` (a greedy policy then always plays it)."""
    with torch.no_grad():
        model.action_heads.b2.zero_()
        model.action_heads.b2[:, action] = 100.0


def test_multicollector_workers_run_the_policy_and_receive_weight_updates():
    """Two worker processes; after the learner's weights change, update_policy_weights_ reaches both workers."""
    model = tiny_model()
    _favour(model, 0)
    policy = EmotionPolicy(model, EmotionMCTS(num_simulations=3), greedy=True, action_spec=cartpole().action_spec)
    collector = MultiCollector([cartpole, cartpole], policy, frames_per_batch=20, total_frames=-1, sync=True)
    played = []
    try:
        for index, batch in enumerate(collector):
            played.append(batch["action"].argmax(-1).float().mean().item())
            if index == 1:
                _favour(model, 1)
                collector.update_policy_weights_()
            if index == 3:
                break
    finally:
        collector.shutdown()
    assert played[:2] == [0.0, 0.0]
    assert played[3] == 1.0, "the workers still act with the old weights"


def test_the_torchrl_example_runs_outside_lightning():
    metrics = runpy.run_path(str(ROOT / "examples" / "torchrl_loop.py"))["main"](
        ["--frames", "96", "--frames-per-batch", "32", "--num-envs", "2", "--simulations", "3", "--batch-size", "16"]
    )
    assert metrics["frames"] == 96 and metrics["buffer"] == 96
    assert metrics["last_loss"] < metrics["first_loss"], "the distilling agent did not learn from the visit counts"


def test_a_plain_script_with_a_multicollector_exits_when_it_closes_the_collector_with_the_helper():
    """TorchRL 0.14's MultiCollector hangs interpreter exit unless its weight-sync schemes are shut down; the example
    closes its collector with ``closing_collector`` and must exit on its own."""
    script = ROOT / "examples" / "torchrl_loop.py"
    args = ["--workers", "2", "--num-envs", "2", "--frames", "32", "--frames-per-batch", "16", "--simulations", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script), *args, "--batch-size", "8"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "frames     32" in done.stdout
