"""The learner (spec 2.3, 3.2): the loss modules it builds, optimizers, phase order, schedules, non-finite guard.

The losses themselves are tested in tests/test_losses.py."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionAgent
from emotion_rl.agent import PHASES
from emotion_rl.losses import DynamicsLoss, LiteralActionLoss, MaxValueActionLoss, PolicyLoss, ValueLoss, masked_mean

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
    ("objective", "cls"),
    [
        ("max_value", MaxValueActionLoss),
        ("literal", LiteralActionLoss),
        ("emotion_rl.losses.LiteralActionLoss", LiteralActionLoss),
    ],
)
def test_the_agent_builds_one_loss_module_per_phase_from_its_settings(objective, cls):
    agent = make_agent(phase2_objective=objective, dynamics_action="taken", return_scale=0.5)
    dynamics, action, value, policy = agent.losses
    assert type(dynamics) is DynamicsLoss and dynamics.action_input == "taken"
    assert type(action) is cls
    assert type(value) is ValueLoss and value.return_scale == 0.5
    assert type(policy) is PolicyLoss
    assert all(loss.model is agent.model for loss in agent.losses)
    assert agent.hparams.phase2_objective == objective  # a plain string: checkpoints load with weights_only=True
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
    ("setting", "value"),
    [("phase2_objective", "mse"), ("dynamics_action", "sampled"), ("schedule", "batch")],
)
def test_unknown_options_are_refused_naming_the_setting(setting, value):
    with pytest.raises(ValueError, match=setting):
        make_agent(**{setting: value})


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
        imagined_value_weight=0.5,
        action_entropy_coef=0.1,
        action_value_norm=True,
        action_awr_coef=0.2,
        action_awr_beta=3.0,
        phase2_updates_transformer=False,
        dynamics_all_emotions=True,
        value_target="td_lambda",
        value_n_step=7,
        value_lambda=0.8,
        value_gamma=0.97,
        target_tau=0.1,
    )
    dynamics, action, value, _ = agent.losses
    assert dynamics.all_emotions
    assert (action.entropy_coef, action.normalize_value, action.awr_coef, action.awr_beta) == (0.1, True, 0.2, 3.0)
    assert not action.update_transformer
    assert (value.target, value.n, value.lam, value.gamma, value.imagined_weight) == ("td_lambda", 7, 0.8, 0.97, 0.5)
    assert value.target_model is agent.target_model and agent.target_model is not agent.model
    assert any(key.startswith("target_model.") for key in agent.state_dict()), "the target network is not saved"
    with pytest.raises(ValueError, match="value_target"):
        make_agent(value_target="gae")


def test_bootstrapped_targets_read_an_ema_of_the_model_updated_after_each_update(monkeypatch, episodes):
    agent, _ = _manual_agent(monkeypatch, value_target="n_step", target_tau=0.25)
    target_before = [p.detach().clone() for p in agent.target_model.parameters()]
    agent.train_batch(_batch(episodes))
    for old, new, online in zip(target_before, agent.target_model.parameters(), agent.model.parameters(), strict=True):
        torch.testing.assert_close(new, old + 0.25 * (online.detach() - old))
    assert not any(p.requires_grad for p in agent.target_model.parameters())
    assert not hasattr(make_agent(value_target="n_step", target_tau=1.0), "target_model"), "tau 1 reads the model"


def test_bounded_actor_step_limits_the_change_of_each_phase2_step(monkeypatch, episodes):
    def action_change(**kwargs) -> float:
        agent, _ = _manual_agent(monkeypatch, **kwargs)
        opt_action = agent.optimizers()[1]
        params = [p for group in opt_action.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        agent._step(opt_action, "action", agent.losses.action(episodes)["loss_action"], agent.hparams.action_max_update)
        return float(torch.stack([(p.detach() - b).norm() for p, b in zip(params, before, strict=True)]).norm())

    free = action_change()
    assert free > 1e-3
    torch.testing.assert_close(action_change(action_max_update=1e-3), 1e-3, rtol=1e-6, atol=0)
    assert action_change(action_max_update=10 * free) == pytest.approx(free, rel=1e-9)


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


def test_the_agent_hands_every_search_option_to_its_planner():
    options = dict(
        q_transform="minmax_completed",
        completed_value="parent",
        dirichlet_alpha=0.25,
        dirichlet_fraction=0.2,
        root_rule="gumbel",
        gumbel_considered=4,
        gumbel_c_visit=30.0,
        gumbel_c_scale=0.5,
    )
    agent = EmotionAgent(obs_dim=4, n_actions=2, max_episode_steps=10, d_model=8, n_layers=1, n_heads=2, **options)
    planner = agent.planner
    assert (planner.q_transform, planner.completed_value) == ("minmax_completed", "parent")
    root = planner.root_rule
    assert (type(root).__name__, root.considered, root.c_visit, root.c_scale) == ("GumbelRoot", 4, 30.0, 0.5)


def test_phase3_reuses_phase2s_forward_only_when_phase2_leaves_the_transformer_alone(monkeypatch, episodes):
    """With phase 2 off the transformer, phase 3 reads the encoding phase 2 made (one forward fewer): the update
    leaves every parameter exactly where four fresh forwards would."""
    shared, _ = _manual_agent(monkeypatch, phase2_updates_transformer=False, imagined_value_weight=1.0)
    fresh, _ = _manual_agent(monkeypatch, phase2_updates_transformer=False, imagined_value_weight=1.0)
    encodes = []
    original = shared.model.encode
    monkeypatch.setattr(shared.model, "encode", lambda batch: encodes.append(1) or original(batch))
    shared.update(episodes)
    assert len(encodes) == 3  # phases 1, 2 + 3, 4
    optimizers = fresh.optimizers()
    for optimizer, phase, loss in zip(optimizers, PHASES, fresh.losses, strict=True):
        out = loss(episodes)
        fresh._step(optimizer, phase, out[f"loss_{phase}"], fresh.hparams.action_max_update)
    for (name, a), b in zip(shared.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_shared_update_steps_each_head_group_once_and_the_transformer_once(monkeypatch, episodes):
    """spec 2.5's single update: one backward of the summed losses; every optimizer steps its own heads with
    those gradients; the transformer moves in the first step only (its Adam state lives there alone)."""
    agent, log = _manual_agent(monkeypatch, shared_update=True)
    transformer = agent.model.transformer_parameters()
    moved = []
    original_step = _RecordingOptimizer.step

    def step_and_watch(self):
        before = [p.detach().clone() for p in transformer]
        original_step(self)
        moved.append(any(not torch.equal(b, p) for b, p in zip(before, transformer, strict=True)))

    monkeypatch.setattr(_RecordingOptimizer, "step", step_and_watch)
    reference = make_agent(shared_update=True)
    outs = [loss(episodes) for loss in reference.losses]
    total = sum(out[f"loss_{phase}"] for out, phase in zip(outs, PHASES, strict=True))
    total.backward()
    expected = {name: p.grad.clone() for name, p in reference.model.named_parameters() if p.grad is not None}
    grads = {}
    original_apply = agent._bounded_step

    def record(optimizer, max_update=None):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in agent.model.named_parameters() if p.grad is not None})
        original_apply(optimizer, max_update)

    monkeypatch.setattr(agent, "_bounded_step", record)
    logs = agent.update(episodes)
    assert log == list(PHASES) and moved == [True, False, False, False]
    assert set(grads) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
    states = [agent.optimizers()[i].inner.state for i in range(4)]
    assert all(p in states[0] for p in transformer) and not any(p in s for s in states[1:] for p in transformer)
    assert {"train/phase1_dynamics_loss", "train/phase4_policy_loss", "train/phase2_imagined_value"} <= set(logs)
