"""The learner (spec 2.3, 3.2): the loss modules it builds, optimizers, phase order, schedules, non-finite guard.

The losses themselves are tested in tests/test_losses.py."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionAgent, EmotionMCTS, GumbelRoot, MonteCarlo
from emotion_rl.agent import PHASES
from emotion_rl.losses import (
    DynamicsLoss,
    LiteralActionLoss,
    MaxValueActionLoss,
    PolicyLoss,
    ValueLoss,
    masked_mean,
)

from conftest import N_ACTIONS, N_EMOTIONS, OBS_DIM, random_episodes


def make_agent(**kwargs) -> EmotionAgent:
    torch.manual_seed(0)
    settings = dict(obs_dim=OBS_DIM, n_actions=N_ACTIONS, max_episode_steps=12, d_model=16, n_layers=1, n_heads=2)
    settings.update(kwargs)
    return EmotionAgent(**settings).double()


@pytest.fixture
def episodes():
    return random_episodes([12, 7, 3], max_len=12, dtype=torch.float64)


@pytest.mark.parametrize(
    ("action_loss", "cls"),
    [
        (MaxValueActionLoss, MaxValueActionLoss),
        (partial(LiteralActionLoss, update_transformer=False), LiteralActionLoss),
        ({"class_path": "emotion_rl.losses.LiteralActionLoss"}, LiteralActionLoss),
    ],
)
def test_the_agent_builds_one_loss_module_per_phase_from_its_components(action_loss, cls):
    agent = make_agent(
        action_loss=action_loss,
        dynamics_loss=partial(DynamicsLoss, action_input="taken"),
        value_loss=partial(ValueLoss, return_scale=0.5),
        gamma=0.9,
    )
    dynamics, action, value, policy = agent.losses
    assert type(dynamics) is DynamicsLoss and dynamics.action_input == "taken"
    assert type(action) is cls
    assert type(value) is ValueLoss and (value.return_scale, value.gamma) == (0.5, 0.9)
    assert type(policy) is PolicyLoss
    assert all(loss.model is agent.model for loss in agent.losses)
    # plain values: checkpoints load with weights_only=True
    assert agent.hparams.action_loss["class_path"] == f"emotion_rl.{cls.__name__}"
    assert agent.hparams.dynamics_loss == {
        "class_path": "emotion_rl.DynamicsLoss",
        "init_args": {"action_input": "taken", "all_emotions": False, "imagined_weight": 0.0},
    }
    assert agent.hparams.value_loss["init_args"]["return_scale"] == 0.5 and agent.hparams.gamma == 0.9
    assert all(key.startswith("model.") for key in agent.state_dict()), "the losses must not save the model twice"


def test_four_distinct_optimizers_share_the_transformer():
    """spec 3.2: four optimizers, each one head group (3e-4) + the shared transformer (1e-4)."""
    agent = make_agent()
    optimizers = agent.configure_optimizers()
    assert len(optimizers) == 4 and len({id(o) for o in optimizers}) == 4
    heads = agent.model.head_parameters()
    transformer_ids = {id(p) for p in agent.model.transformer_parameters()}
    seen_heads = set()
    for optimizer, phase in zip(optimizers, PHASES, strict=True):
        head_group, transformer_group = optimizer.param_groups
        assert head_group["lr"] == 3e-4 and transformer_group["lr"] == 1e-4
        assert {id(p) for p in head_group["params"]} == {id(p) for p in heads[phase]}
        assert {id(p) for p in transformer_group["params"]} == transformer_ids
        seen_heads |= {id(p) for p in head_group["params"]}
    all_ids = {id(p) for p in agent.parameters()}
    assert seen_heads | transformer_ids == all_ids
    assert not seen_heads & transformer_ids


class _RecordingOptimizer:
    def __init__(self, phase: str, inner: torch.optim.Optimizer, log: list) -> None:
        self.phase, self.inner, self.log = phase, inner, log

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.log.append(self.phase)
        self.inner.step()


def _manual_agent(monkeypatch, **kwargs):
    agent = make_agent(**kwargs)
    log: list[str] = []
    optimizers = [_RecordingOptimizer(p, o, log) for p, o in zip(PHASES, agent.configure_optimizers(), strict=True)]
    monkeypatch.setattr(agent, "optimizers", lambda: optimizers)
    monkeypatch.setattr(agent, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(agent, "log", lambda *a, **k: None)
    monkeypatch.setattr(agent, "log_dict", lambda *a, **k: None)
    return agent, log


def _batch(episodes):
    stats = TensorDict(
        env_steps=torch.tensor(10),
        episodes=torch.tensor(1),
        episode_return=torch.tensor(float("nan")),
        emotion_usage=torch.full((N_EMOTIONS,), 1 / N_EMOTIONS),
        temperature=torch.tensor(1.0),
    )
    return TensorDict(episodes=episodes, stats=stats)


def test_training_step_runs_the_phases_in_order_and_updates_the_transformer_each_time(monkeypatch, episodes):
    agent, log = _manual_agent(monkeypatch)
    snapshots = []
    original_step = _RecordingOptimizer.step

    def step_and_snapshot(self):
        original_step(self)
        snapshots.append(agent.model.obs_embed.weight.detach().clone())

    monkeypatch.setattr(_RecordingOptimizer, "step", step_and_snapshot)
    before = agent.model.obs_embed.weight.detach().clone()
    agent.train_batch(_batch(episodes))
    assert log == list(PHASES)
    for previous, current in zip([before, *snapshots[:-1]], snapshots, strict=True):
        assert not torch.equal(previous, current)  # the transformer moved in every phase


def test_timestep_schedule_steps_four_optimizers_per_timestep(monkeypatch):
    episodes = random_episodes([3, 2], max_len=4, dtype=torch.float64)
    agent, log = _manual_agent(monkeypatch, schedule="timestep")
    agent.train_batch(_batch(episodes))
    assert log == list(PHASES) * 5  # 3 + 2 valid timesteps


@pytest.mark.parametrize("weighted", [False, True])
def test_timestep_schedule_weighs_only_step_t_of_sequence_t(monkeypatch, weighted):
    """Each update of the per-timestep loop sees sequence_t = steps 0..t with only step t counting (times the
    batch's own ``weight`` when it has one)."""
    episodes = random_episodes([3, 2], max_len=4, dtype=torch.float64)
    if weighted:
        episodes["weight"] = torch.tensor([[0.5, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]], dtype=torch.float64)
    agent, _ = _manual_agent(monkeypatch, schedule="timestep")
    seen = []
    monkeypatch.setattr(agent, "update", lambda batch: seen.append(batch) or {"x": torch.tensor(0.0)})
    agent.train_batch(_batch(episodes))
    assert [(b.shape[1], b["weight"].tolist()) for b in seen] == [
        (1, [[0.5 if weighted else 1.0]]),
        (2, [[0.0, 2.0 if weighted else 1.0]]),
        (3, [[0.0, 0.0, 3.0 if weighted else 1.0]]),
        (1, [[4.0 if weighted else 1.0]]),
        (2, [[0.0, 5.0 if weighted else 1.0]]),
    ]
    assert "weight" not in episodes.keys() or episodes["weight"][0, 0] == 0.5, "the batch itself was changed"


def test_non_finite_loss_stops_before_any_parameter_changes(monkeypatch, episodes):
    agent, log = _manual_agent(monkeypatch)
    episodes["next_observation"][0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    with pytest.raises(FloatingPointError, match="phase 'dynamics'"):
        agent.train_batch(_batch(episodes))
    assert log == []
    for key, value in agent.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_non_finite_gradient_of_a_finite_loss_stops_before_the_phase_steps(monkeypatch, episodes):
    """sqrt at 0 has an infinite derivative: phase 3's loss is 0 (finite) and its gradient is inf."""
    agent, log = _manual_agent(monkeypatch)

    def infinite_slope(batch, encoding=None):
        value = agent.model.emotion_values(agent.model.encode(batch).hidden)[..., 0]
        return TensorDict(loss_value=(value - value.detach()).abs().sqrt().mean())

    monkeypatch.setattr(agent, "losses", agent.losses._replace(value=infinite_slope))
    with pytest.raises(FloatingPointError, match="phase 'value' produced a non-finite gradient"):
        agent.train_batch(_batch(episodes))
    assert log == ["dynamics", "action"], "phases 1 and 2 stepped; phase 3 must not (only a step changes weights)"
    value_params = [*agent.model.head_parameters()["value"], *agent.model.transformer_parameters()]
    assert all(p.grad is None for p in value_params), "the damaged gradients were left in place"
    for key, value in agent.state_dict().items():
        assert torch.isfinite(value).all(), key


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"action_loss": {"class_path": "emotion_rl.losses.Nowhere"}}, "class_path"),
        ({"dynamics_loss": partial(DynamicsLoss, action_input="sampled")}, "action_input"),
        ({"value_loss": {"class_path": "emotion_rl.ValueLoss", "init_args": {"discount": 0.9}}}, "discount"),
        ({"schedule": "batch"}, "schedule"),
    ],
)
def test_unknown_options_are_refused_naming_the_setting(settings, match):
    with pytest.raises(ValueError, match=match):
        make_agent(**settings)


def test_context_window_sizes_the_model_and_makes_the_policy_plan_on_recent_steps():
    whole = make_agent()
    assert whole.model.context_window == 12 and whole.make_policy().context_window == 12
    windowed = make_agent(context_window=4)
    assert windowed.model.context_window == 4  # 4 real steps (the imagined state has its own position)
    policy = windowed.make_policy(greedy=True)
    assert policy.context_window == 4
    with pytest.raises(ValueError, match="context_window"):
        make_agent(context_window=0)


# ---------------------------------------------------------------------------------------------------- options
def test_learning_options_reach_the_loss_modules():
    agent = make_agent(
        dynamics_loss=partial(DynamicsLoss, all_emotions=True),
        action_loss=partial(MaxValueActionLoss, update_transformer=False),
        value_loss=partial(ValueLoss, imagined_weight=0.5, target=MonteCarlo(bootstrap_truncation=True)),
        gamma=0.97,
    )
    dynamics, action, value, _ = agent.losses
    assert dynamics.all_emotions
    assert not action.update_transformer
    assert type(value.target) is MonteCarlo and value.target.bootstrap_truncation
    assert (value.gamma, value.imagined_weight) == (0.97, 0.5)
    assert agent.hparams.value_loss["init_args"]["target"] == {
        "class_path": "emotion_rl.MonteCarlo",
        "init_args": {"bootstrap_truncation": True},
    }
    assert all(key.startswith("model.") for key in agent.state_dict()), "the agent saves the model and nothing else"
    with pytest.raises(TypeError, match="ValueEstimator"):
        make_agent(value_loss=partial(ValueLoss, target="gae"))


def test_diagnostics_are_off_by_default_and_logged_once_per_collection_when_on(monkeypatch, episodes):
    logged = {}
    agent, _ = _manual_agent(monkeypatch)
    monkeypatch.setattr(agent, "log_dict", lambda logs, **k: logged.update(logs))
    agent.train_batch(_batch(episodes))
    assert not any(key.startswith("diagnostics/") for key in logged)
    agent, _ = _manual_agent(monkeypatch, log_diagnostics=True)
    monkeypatch.setattr(agent, "log_dict", lambda logs, **k: logged.update(logs))
    agent.train_batch(_batch(episodes))
    keys = {f"diagnostics/action_entropy_{e}" for e in range(N_EMOTIONS)} | {
        "diagnostics/action_agreement",
        "diagnostics/imagined_value_error_true",
        "diagnostics/imagined_value_error_predicted",
        "diagnostics/imagined_value_bias",
    }
    assert keys <= set(logged) and all(torch.isfinite(logged[k]) for k in keys)
    assert 0 <= logged["diagnostics/action_agreement"] <= 1
    later = _batch(episodes)  # a later batch of the same collection: its stats carry nothing new
    later["stats", "emotion_usage"] = torch.full((N_EMOTIONS,), float("nan"))
    logged.clear()
    agent.train_batch(later)
    assert "train/phase1_dynamics_loss" in logged and not any(key.startswith("diagnostics/") for key in logged)


def test_diagnostics_compare_the_root_gaps_the_collection_carries_with_the_value_error(monkeypatch, episodes):
    agent, _ = _manual_agent(monkeypatch, log_diagnostics=True)
    logged = {}
    monkeypatch.setattr(agent, "log_dict", lambda logs, **k: logged.update(logs))
    batch = _batch(episodes)
    batch["stats", "root_q_gap"] = torch.tensor([0.0, 0.0, 1e6])  # two states decided on nothing, one far ahead
    agent.train_batch(batch)
    assert logged["diagnostics/value_rmse"] > 0
    assert logged["diagnostics/root_q_gap_below_value_rmse"].item() == pytest.approx(2 / 3)
    assert logged["diagnostics/root_q_gap_over_value_rmse"].item() == 0.0  # the median gap
    assert "diagnostics/root_action_gap_over_value_rmse" not in logged


def test_diagnostics_interval_logs_them_once_per_interval_of_env_steps(monkeypatch, episodes):
    """``diagnostics_interval=100``: collections at 64, 128, 192, 256 env steps cross 100 and 200, so the
    diagnostics come at 64 (the first), 128 and 256; with 0, at every collection."""
    for interval, expected in ((100, [True, True, False, True]), (0, [True] * 4)):
        agent, _ = _manual_agent(monkeypatch, log_diagnostics=True, diagnostics_interval=interval)
        seen = []
        monkeypatch.setattr(
            agent, "log_dict", lambda logs, seen=seen, **k: seen.append(any("diagnostics/" in n for n in logs))
        )
        for env_steps in (64, 128, 192, 256):
            batch = _batch(episodes)
            batch["stats", "env_steps"] = torch.tensor(env_steps)
            seen.clear()
            agent.train_batch(batch)
            expected_now = expected.pop(0)
            assert any(seen) is expected_now, (interval, env_steps)


def test_diagnostics_measure_entropy_agreement_and_imagined_bias(episodes):
    agent = make_agent()
    with torch.no_grad():  # emotion 3's action head uniform; all the others identical
        heads = agent.model.action_heads
        for w in (heads.w1, heads.b1, heads.w2, heads.b2):
            w.copy_(w[0].expand_as(w))
        heads.w2[3].zero_()
        heads.b2[3].zero_()
    logs = agent.diagnostics(episodes)
    torch.testing.assert_close(logs["diagnostics/action_entropy_3"], torch.tensor(N_ACTIONS, dtype=torch.float64).log())
    assert logs["diagnostics/action_entropy_0"] < logs["diagnostics/action_entropy_3"]
    mask = episodes["mask"]
    encoding = agent.model.encode(episodes)
    uniform_argmax = torch.zeros_like(episodes["action"])  # argmax of a uniform head: action 0
    best = agent.model.action_logits(encoding.hidden).argmax(-1)[..., 0]
    same = (best == uniform_argmax).double()
    # 7 identical heads agree among themselves (42 ordered pairs); head 3 agrees with them where best == 0
    expected = masked_mean((42 + 14 * same) / 56, mask)
    torch.testing.assert_close(logs["diagnostics/action_agreement"], expected)
    gaps = []
    for b, length in enumerate(mask.sum(-1).tolist()):
        for t in range(length - 1):
            state = episodes["next_observation"][b, t : t + 1]
            imagined = agent.model.evaluate(episodes[b : b + 1, : t + 1], imagined_observation=state)["values"]
            real = agent.model.evaluate(episodes[b : b + 1, : t + 2])["values"]
            gaps.append(imagined.mean() - real.mean())
    torch.testing.assert_close(logs["diagnostics/imagined_value_bias"], torch.stack(gaps).mean())


def test_gradient_clip_val_clips_every_phase_before_its_step(monkeypatch, episodes):
    agent, log = _manual_agent(monkeypatch, gradient_clip_val=0.5)
    clipped = []

    def clip_grad_norm_(parameters, max_norm):  # no Trainer attached: the agent clips with torch directly
        clipped.append((log.copy(), max_norm))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_)
    agent.train_batch(_batch(episodes))
    assert clipped == [([], 0.5), (["dynamics"], 0.5), (["dynamics", "action"], 0.5), (list(PHASES[:3]), 0.5)]


def test_the_agent_acts_with_the_planner_it_is_given_and_keeps_its_config():
    planner = EmotionMCTS(7, q_transform="minmax_completed", root_rule=GumbelRoot(considered=4))
    agent = EmotionAgent(
        obs_dim=4, n_actions=2, max_episode_steps=10, d_model=8, n_layers=1, n_heads=2, planner=planner
    )
    assert agent.planner is planner and agent.make_policy().planner is planner
    config = agent.hparams.planner
    assert config["class_path"] == "emotion_rl.EmotionMCTS"
    assert config["init_args"]["num_simulations"] == 7
    assert config["init_args"]["root_rule"]["init_args"]["considered"] == 4
    rebuilt = EmotionAgent(**agent.hparams).planner  # what a checkpoint's hyper-parameters rebuild
    assert type(rebuilt) is EmotionMCTS and repr(rebuilt) == repr(planner) and rebuilt.num_simulations == 7
    assert EmotionAgent(obs_dim=4, n_actions=2, max_episode_steps=10).hparams.planner == {
        "class_path": "emotion_rl.EmotionMCTS",
        "init_args": dict(EmotionMCTS().init_args()),
    }, "the default planner is spec 1's search"


def test_phase3_reuses_phase2s_forward_only_when_phase2_leaves_the_transformer_alone(monkeypatch, episodes):
    """With phase 2 off the transformer, phase 3 reads the encoding phase 2 made (one forward fewer): the update
    leaves every parameter exactly where four fresh forwards would."""
    settings = dict(
        action_loss=partial(MaxValueActionLoss, update_transformer=False),
        value_loss=partial(ValueLoss, imagined_weight=1.0),
    )
    shared, _ = _manual_agent(monkeypatch, **settings)
    fresh, _ = _manual_agent(monkeypatch, **settings)
    encodes = []
    original = shared.model.encode
    monkeypatch.setattr(shared.model, "encode", lambda batch: encodes.append(1) or original(batch))
    shared.update(episodes)
    assert len(encodes) == 3  # phases 1, 2 + 3, 4
    optimizers = fresh.optimizers()
    for optimizer, phase, loss in zip(optimizers, PHASES, fresh.losses, strict=True):
        out = loss(episodes)
        fresh._step(optimizer, phase, out[f"loss_{phase}"])
    for (name, a), b in zip(shared.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
