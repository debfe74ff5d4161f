"""Every tensor follows the model's device and float type (issue 18): envs, collector and replay on the CPU, the
model, the search's model calls and the four training phases wherever the model is (docs/performance.md, "GPU").

Parametrised over the devices present: ``cpu`` always, ``cuda`` when there is one. Every device also runs the
model in float64 while the envs and the replay produce float32: a tensor that does not follow the model (made in
the default type, or left in the env's) then fails in the model's matrix products, as a CPU tensor would meet a
CUDA one. (An elementwise mix of float32 and float64 is promoted silently: such a tensor shows only on a GPU.)
"""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.serialization
from tensordict import TensorDict
from torchrl.envs import EnvBase

from emotion_rl import EmotionAgent, testing
from emotion_rl.agent import PHASES
from emotion_rl.checkpoint import AtomicCheckpointIO, load_checkpoint
from emotion_rl.cli import main
from emotion_rl.data.envs import make_env
from emotion_rl.data.episodes import EpisodeAssembler
from emotion_rl.data.replay import EpisodeReplay
from emotion_rl.data.rollout import play
from emotion_rl.data.selfplay import SelfPlayCounters, make_collector, self_play
from emotion_rl.history import History
from emotion_rl.losses import MonteCarlo, ValueLoss
from emotion_rl.mcts.rules import GumbelRoot, PUCTRoot
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.mcts.tree import host_arrays, to_numpy
from emotion_rl.model import EmotionModel

from conftest import CONFIG, N_ACTIONS, N_EMOTIONS, OBS_DIM, TINY

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
ACCELERATOR = {"cpu": "cpu", "cuda": "gpu"}
"""Lightning's accelerator name of each device type (``--trainer.accelerator``)."""

ON_DEVICE = [
    pytest.param(device, dtype, id=f"{device.type}-{str(dtype).removeprefix('torch.')}")
    for device in DEVICES
    for dtype in (torch.float32, torch.float64)
]
"""(device, the model's float type): float64 makes the CPU case catch tensors that ignore the model."""

CARTPOLE_STEPS = 30


def tiny_agent(
    device: torch.device, dtype: torch.dtype, n_actions: int = N_ACTIONS, planner: dict | None = None, **kwargs
) -> EmotionAgent:
    """A tiny agent moved as a user would: ``.to(device)``, then to the float type (``planner``: EmotionMCTS
    options on top of 6 simulations)."""
    torch.manual_seed(0)
    settings = dict(d_model=16, n_layers=1, n_heads=2, planner=EmotionMCTS(6, **(planner or {})), **kwargs)
    return EmotionAgent(OBS_DIM, n_actions, CARTPOLE_STEPS, **settings).to(device).to(dtype)


def assert_on(tensors: TensorDict | History, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Every tensor of ``tensors`` on ``device`` (type and index), and every floating one in ``dtype`` when given."""
    for key, value in tensors.items(include_nested=True, leaves_only=True):
        assert value.device.type == device.type, f"{key} is on {value.device}, not {device}"
        if dtype is not None and value.is_floating_point():
            assert value.dtype == dtype, f"{key} is {value.dtype}, not {dtype}"


def cartpole(num_envs: int, seed: int | None = 0) -> EnvBase:
    return make_env("CartPole-v1", num_envs, seed=seed, max_episode_steps=CARTPOLE_STEPS)


# ------------------------------------------------------------------------------------------------- acting
@pytest.mark.parametrize(("device", "dtype"), ON_DEVICE)
def test_the_agent_moves_whole_and_its_policy_acts_in_a_cpu_env(device, dtype):
    """The env makes float32 observations on the CPU; the policy keeps its histories on the model's device and in
    its float type, plans there, draws from a CPU generator (the datamodule's) and answers on the CPU."""
    agent = tiny_agent(device, dtype, n_actions=2, planner={"root_rule": PUCTRoot()})  # the policy draws emotions
    for name, tensor in [*agent.named_parameters(), *agent.named_buffers()]:
        assert tensor.device.type == device.type and tensor.dtype == dtype, name
    env = cartpole(2)
    assert env.device == torch.device("cpu")
    policy = agent.make_policy(generator=torch.Generator().manual_seed(0))  # samples emotions and actions
    steps = play(env, policy, 8, break_when_any_done=False)
    assert steps.batch_size == (2, 8)
    assert_on(steps, torch.device("cpu"))
    assert steps["observation"].dtype == torch.float32
    for key in ("policy_target", "prior"):
        assert steps[key].dtype == torch.float32
        torch.testing.assert_close(steps[key].sum(-1), torch.ones(2, 8))
    assert ((steps["emotion"] >= 0) & (steps["emotion"] < N_EMOTIONS)).all()
    assert (steps["visit_counts"].sum(-1) == agent.planner.num_simulations).all()

    history = policy.histories()
    assert_on(history, device, dtype)
    for env_index, length in enumerate(policy.history_lengths.tolist()):  # its current episode's observations
        planned_on = history.observation[env_index, :length].cpu().double()
        torch.testing.assert_close(planned_on, steps["observation"][env_index, -length:].double(), rtol=0, atol=1e-6)
    greedy = play(env, agent.make_policy(greedy=True), 4)
    assert_on(greedy, torch.device("cpu"))


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.type)
def test_the_collector_steps_cpu_envs_stores_on_the_cpu_and_acts_with_the_stream_s_own_policy(device):
    """make_collector: envs and batches on the CPU, no policy_device (TorchRL would otherwise act with a cast copy of
    a policy whose parameters and buffers live on two devices: its ``frames`` would not be the stream's)."""
    agent = tiny_agent(device, torch.float32, n_actions=2)
    policy = agent.make_policy()
    collector = make_collector(policy, lambda n, seed=None: cartpole(n, seed), 2, 8, env_seed=0)
    try:
        assert collector.policy is policy
        assert collector.policy_device is None
        assert collector.env_device == torch.device("cpu") and collector.storing_device == torch.device("cpu")
        before = int(policy.frames)
        batch = next(iter(collector))
    finally:
        collector.shutdown()
    assert batch.batch_size == (2, 4) and batch.device == torch.device("cpu")
    assert_on(batch, torch.device("cpu"))
    assert int(policy.frames) == before + 8  # the policy the stream reads (temperature) acted on every step
    assert policy.histories().observation.device.type == device.type


@pytest.mark.parametrize(("device", "dtype"), ON_DEVICE)
@pytest.mark.parametrize("root_rule", ["puct", "gumbel"])
def test_the_search_runs_on_the_model_s_device_and_answers_there(device, dtype, root_rule):
    """EmotionMCTS.search on a history on the model's device: the tree is numpy on the CPU, every model call gets
    its input on the model's device and type, and the whole result is on that device."""
    torch.manual_seed(0)
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=1, n_heads=2, context_window=8).to(device, dtype)
    history = testing.random_history(3, 5, OBS_DIM, N_ACTIONS, seed=1, dtype=dtype).to(device)
    root = GumbelRoot(considered=4) if root_rule == "gumbel" else PUCTRoot()
    planner = EmotionMCTS(num_simulations=7, root_rule=root, q_transform="minmax")
    result = planner.search(model, history, generator=torch.Generator().manual_seed(0), explore=True)
    assert_on(result, device)
    assert result["visit_distribution"].dtype == dtype and result["prior"].dtype == dtype
    assert result["policy_target"].dtype == dtype
    assert (result["visit_counts"].sum(-1) == 7).all()
    torch.testing.assert_close(result["visit_distribution"].sum(-1), torch.ones(3, dtype=dtype, device=device))
    if root_rule == "gumbel":
        assert result["selected_emotion"].dtype == torch.long


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_an_expansion_crosses_to_the_host_in_one_copy_with_the_same_arrays(dtype):
    """host_arrays' accelerator path (one concatenated copy) gives what one copy per array gives, shapes included."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(*shape, generator=g).to(dtype) for shape in ((5, 8), (5, 8), (5, 8, 4), (5,))]
    batched = host_arrays(tensors, batched=True)
    for got, tensor in zip(batched, tensors, strict=True):
        expected = to_numpy(tensor)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------------------------------- learning
def manual_optimisation(agent: EmotionAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drive the agent's manual optimisation without a Trainer (as tests/test_agent.py does)."""
    optimizers = agent.configure_optimizers()
    monkeypatch.setattr(agent, "optimizers", lambda: optimizers)
    monkeypatch.setattr(agent, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(agent, "log", lambda *a, **k: None)
    monkeypatch.setattr(agent, "log_dict", lambda *a, **k: None)


@pytest.mark.parametrize(("device", "dtype"), ON_DEVICE)
def test_the_four_phases_learn_on_the_model_s_device_from_a_cpu_float32_replay_batch(device, dtype, monkeypatch):
    """A training batch as the replay yields it (float32, CPU) reaches the model's device and type through
    ``batch_to_model`` (the training step's move); the four losses (the value targets with the stored truncation
    bootstrap and the imagined-token values), the update and the diagnostics then run there."""
    value_loss = partial(ValueLoss, target=MonteCarlo(bootstrap_truncation=True), imagined_weight=1.0)
    agent = tiny_agent(device, dtype, value_loss=value_loss)
    manual_optimisation(agent, monkeypatch)
    episodes = testing.random_episodes([9, 5, 2], 9, seed=3, obs_dim=OBS_DIM, n_actions=N_ACTIONS)
    batch = agent.batch_to_model(testing.training_batch(episodes, env_steps=40))
    assert_on(batch, device, dtype)
    assert batch["episodes", "action"].dtype == torch.long and batch["episodes", "mask"].dtype == torch.bool
    episodes = batch["episodes"]

    for phase, module in zip(PHASES, agent.losses, strict=True):
        loss = module(episodes)[f"loss_{phase}"]
        assert loss.device.type == device.type and loss.dtype == dtype and torch.isfinite(loss), phase
    before = {name: p.detach().clone() for name, p in agent.model.named_parameters()}
    logs = agent.update(episodes)
    assert set(logs) >= {f"train/phase{i + 1}_{phase}_loss" for i, phase in enumerate(PHASES)}
    for key, value in logs.items():
        assert value.device.type == device.type and torch.isfinite(value), key
    for name, p in agent.named_parameters():
        assert p.device.type == device.type and p.dtype == dtype and torch.isfinite(p).all(), name
    assert any(not torch.equal(before[name], p) for name, p in agent.model.named_parameters())
    for optimizer in agent.optimizers():
        for state in optimizer.state.values():
            assert all(s.device.type == device.type for s in state.values() if s.ndim), "optimizer state"
    for key, value in agent.diagnostics(episodes).items():
        assert value.device.type == device.type and torch.isfinite(value), key


@pytest.mark.parametrize(("device", "dtype"), ON_DEVICE)
def test_reanalyze_searches_cpu_float32_episodes_with_the_model_on_its_device(device, dtype):
    """Stored episodes (CPU, float32) are re-searched on the model's device and type; the targets come back on the
    episodes' device, a distribution on every valid step and zeros past the end."""
    agent = tiny_agent(device, dtype)
    episodes = testing.random_episodes([6, 3], 6, seed=4, obs_dim=OBS_DIM, n_actions=N_ACTIONS)
    fresh = agent.reanalyze(episodes, chunk=4)
    mask = episodes["mask"]
    assert fresh.device == mask.device and fresh.dtype == torch.float32
    torch.testing.assert_close(fresh[mask].sum(-1), torch.ones(int(mask.sum())))
    assert (fresh[~mask] == 0).all()
    on_device = agent.reanalyze(episodes.to(device), chunk=4)  # the datamodule hands them over on the device
    assert on_device.device.type == device.type
    torch.testing.assert_close(on_device.cpu(), fresh)


# ------------------------------------------------------------------------------------------------- self-play stream
@pytest.mark.parametrize(("device", "dtype"), ON_DEVICE)
def test_the_self_play_stream_feeds_the_agent_from_cpu_envs(device, dtype, monkeypatch):
    """Collector, assembler and replay on the CPU with the policy's model on the device; the stream's batches go to
    the model with batch_to_model and train there."""
    agent = tiny_agent(device, dtype, n_actions=2)
    manual_optimisation(agent, monkeypatch)
    policy = agent.make_policy()
    collector = make_collector(policy, lambda n, seed=None: cartpole(n, seed), 2, 16, env_seed=0)
    replay = EpisodeReplay(20, max_episode_steps=CARTPOLE_STEPS)
    counters = SelfPlayCounters()
    stream = self_play(
        collector, policy, EpisodeAssembler(CARTPOLE_STEPS), replay, counters, lambda: replay.sample(2), 1, 2
    )
    for _ in range(3):
        batch = next(stream)
        assert_on(batch, torch.device("cpu"))
        agent.train_batch(agent.batch_to_model(batch))
    stream.close()
    assert counters.episodes >= 1
    assert_on(replay.sample(1), torch.device("cpu"))


# ------------------------------------------------------------------------------------------------- the command line
def _rows(metrics: Path) -> list[dict[str, str]]:
    with open(metrics) as f:
        return list(csv.DictReader(f))


def _as_if_written_on_a_gpu(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewrite ``path`` so that every tensor says it was saved from ``cuda:0`` (what a GPU run writes)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, path)


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.type)
@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_fit_on_the_accelerator_and_its_checkpoint_loads_on_the_cpu(tmp_path, device, precision, monkeypatch):
    """``fit --trainer.accelerator <device>``: every training batch reaches the model on its device and in its type
    (64-true: float64 model, float32 envs and replay), the losses are finite, greedy validation runs, and the
    checkpoint (a GPU-written one: on a CPU-only machine, rewritten as such) validates on the CPU."""
    seen: list[tuple[str, torch.dtype, torch.dtype]] = []
    train_batch = EmotionAgent.train_batch

    def recording(self: EmotionAgent, batch: TensorDict) -> None:
        weight = next(self.model.parameters())
        seen.append(
            (batch["episodes", "observation"].device.type, batch["episodes", "observation"].dtype, weight.dtype)
        )
        assert weight.device.type == device.type
        train_batch(self, batch)

    monkeypatch.setattr(EmotionAgent, "train_batch", recording)
    logs = str(tmp_path / "runs")
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            f"--trainer.accelerator={ACCELERATOR[device.type]}",
            "--trainer.devices=1",
            f"--trainer.precision={precision}",
            "--trainer.max_steps=8",  # 2 batches of four phases
            "--trainer.val_check_interval=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={logs}",
        ]
    )
    assert cli.trainer.strategy.root_device.type == device.type
    dtype = torch.float64 if precision == "64-true" else torch.float32
    assert seen and all(entry == (device.type, dtype, dtype) for entry in seen), seen
    version = Path(logs) / "cartpole" / "version_0"
    rows = _rows(version / "metrics.csv")
    for phase in ("phase1_dynamics", "phase2_action", "phase3_value", "phase4_policy"):
        values = [float(r[f"train/{phase}_loss"]) for r in rows if r.get(f"train/{phase}_loss")]
        assert values and all(math.isfinite(v) for v in values), phase
    assert any(r.get("val/return_mean") for r in rows)

    last = version / "checkpoints" / "last.ckpt"
    if device.type == "cpu":
        _as_if_written_on_a_gpu(last, monkeypatch)
    for loaded in (load_checkpoint(last), AtomicCheckpointIO().load_checkpoint(last)):
        weights = loaded["state_dict"]
        assert all(t.device.type == "cpu" and t.dtype == dtype for t in weights.values() if t.is_floating_point())
    from emotion_rl.viz import load_agent

    assert next(load_agent(last).parameters()).device.type == "cpu"
    cli = main(
        [
            "validate",
            f"--config={CONFIG}",
            *TINY,
            "--trainer.accelerator=cpu",
            f"--trainer.precision={precision}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={logs}",
            f"--ckpt_path={last}",
        ]
    )
    assert 1 <= float(cli.trainer.callback_metrics["val/return_mean"]) <= 40
