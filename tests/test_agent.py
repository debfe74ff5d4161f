"""The four phases (spec 2.2 - 2.4, 3.2, checklist 6): gradient flow, stop-gradients, optimizers, schedules."""

from __future__ import annotations

import pytest
import torch

from emotion_rl import EmotionAgent
from emotion_rl.agent import PHASES, masked_mean

from conftest import N_ACTIONS, N_EMOTIONS, OBS_DIM, random_episodes

GROUPS = ("transformer", "dynamics", "action", "value", "policy")


def make_agent(**kwargs) -> EmotionAgent:
    torch.manual_seed(0)
    settings = dict(obs_dim=OBS_DIM, n_actions=N_ACTIONS, max_episode_steps=12, d_model=16, n_layers=1, n_heads=2)
    settings.update(kwargs)
    return EmotionAgent(**settings).double()


def grad_by_group(agent: EmotionAgent) -> dict[str, float]:
    """Total absolute gradient per parameter group (0.0 for None)."""
    groups = {"transformer": agent.model.transformer_parameters(), **agent.model.head_parameters()}
    return {
        name: sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in params)
        for name, params in groups.items()
    }


def backward_of(agent: EmotionAgent, phase: str, episodes) -> dict[str, float]:
    agent.zero_grad(set_to_none=True)
    if phase == "action":
        loss = agent.phase2_action(episodes)[0]
    else:
        loss = {"dynamics": agent.phase1_dynamics, "value": agent.phase3_value, "policy": agent.phase4_policy}[phase](
            episodes
        )
    masked_mean(loss, episodes["mask"]).backward()
    return grad_by_group(agent)


@pytest.fixture
def episodes():
    return random_episodes([12, 7, 3], max_len=12, dtype=torch.float64)


@pytest.mark.parametrize(
    ("phase", "trained"),
    [
        ("dynamics", {"dynamics", "transformer"}),  # phase 1: action head frozen
        ("action", {"action", "transformer"}),  # phase 2 (section 4.3): dynamics, value, policy frozen
        ("value", {"value", "transformer"}),  # phase 3
        ("policy", {"policy", "transformer"}),  # phase 4
    ],
)
def test_gradient_flow_per_phase(phase, trained, episodes):
    """spec 2.4: each phase trains its head and the transformer, and nothing else."""
    grads = backward_of(make_agent(), phase, episodes)
    for group in GROUPS:
        if group in trained:
            assert grads[group] > 0, f"phase {phase}: {group} got no gradient"
        else:
            assert grads[group] == 0, f"phase {phase}: {group} must stay frozen, got {grads[group]}"


def test_phase1_with_the_taken_action_also_freezes_the_action_heads(episodes):
    grads = backward_of(make_agent(dynamics_action="taken"), "dynamics", episodes)
    assert grads["dynamics"] > 0 and grads["transformer"] > 0 and grads["action"] == 0


def test_phase1_target_is_the_next_observation_for_the_selected_emotion(episodes):
    agent = make_agent()
    per_step = agent.phase1_dynamics(episodes)
    h = agent.model.encode(episodes).hidden
    b, t = 1, 4
    e = int(episodes["emotion"][b, t])
    action = torch.softmax(agent.model.action_logits(h[b, t]), -1)
    z = agent.model.dynamics(h[b, t], action)[e]
    expected = (z - episodes["next_observation"][b, t]).pow(2).sum()
    torch.testing.assert_close(per_step[b, t], expected)


def test_phase1_taken_action_option_feeds_the_one_hot_action(episodes):
    agent = make_agent(dynamics_action="taken")
    per_step = agent.phase1_dynamics(episodes)
    h = agent.model.encode(episodes).hidden
    b, t = 0, 5
    e, a = int(episodes["emotion"][b, t]), int(episodes["action"][b, t])
    one_hot = torch.nn.functional.one_hot(torch.tensor(a), N_ACTIONS).double().expand(N_EMOTIONS, -1)
    z = agent.model.dynamics(h[b, t], one_hot)[e]
    torch.testing.assert_close(per_step[b, t], (z - episodes["next_observation"][b, t]).pow(2).sum())


def test_phase2_literal_objective_is_zero_with_zero_gradient(episodes):
    """SPEC_NOTES 7: MSE(Z(h, A(h)), stopgrad(Z(h, A(h)))) is identically 0 and so is its gradient."""
    agent = make_agent(phase2_objective="literal")
    loss, _ = agent.phase2_action(episodes)
    assert torch.equal(loss, torch.zeros_like(loss))
    agent.zero_grad(set_to_none=True)
    masked_mean(loss, episodes["mask"]).backward()
    for group, total in grad_by_group(agent).items():
        assert total == 0, f"literal phase 2 gave {group} a gradient"


def test_phase2_max_value_raises_the_imagined_value(episodes):
    """Section 4.3: a step along the phase-2 gradient raises V(Z(h, A(h))) (the frozen critic's mean value)."""
    agent = make_agent()
    before = masked_mean(agent.phase2_action(episodes)[1], episodes["mask"])
    optimizer = torch.optim.SGD(agent.model.head_parameters()["action"], lr=1e-2)
    agent.zero_grad(set_to_none=True)
    masked_mean(agent.phase2_action(episodes)[0], episodes["mask"]).backward()
    optimizer.step()
    after = masked_mean(agent.phase2_action(episodes)[1], episodes["mask"])
    assert after > before


def test_phase2_imagined_value_sees_only_real_steps_up_to_t(episodes):
    """The imagined token at t attends to real tokens 0..t: changing step t+1 leaves step t's value unchanged."""
    agent = make_agent()
    _, value = agent.phase2_action(episodes)
    changed = episodes.clone()
    changed["observation"][:, 6:] += 1.0
    _, changed_value = agent.phase2_action(changed)
    torch.testing.assert_close(value[:, :6], changed_value[:, :6], rtol=0, atol=0)
    assert not torch.allclose(value[0, 6:], changed_value[0, 6:])


def test_phase2_imagined_value_matches_the_model_evaluating_the_imagined_state(episodes):
    """The whole-episode imagined pass equals model.evaluate(sequence_t, imagined_observation=z_t) (spec 1.5)."""
    agent = make_agent()
    _, value = agent.phase2_action(episodes)
    h = agent.model.encode(episodes).hidden
    b, t = 1, 3
    e = int(episodes["emotion"][b, t])
    action = torch.softmax(agent.model.action_logits(h[b, t]), -1)
    z = agent.model.dynamics(h[b, t], action)[e]
    out = agent.model.evaluate(episodes[b : b + 1, : t + 1], imagined_observation=z.unsqueeze(0))
    torch.testing.assert_close(value[b, t], out["values"][0].mean())


def test_phase2_leaves_requires_grad_flags_as_they_were(episodes):
    agent = make_agent()
    agent.phase2_action(episodes)
    assert all(p.requires_grad for p in agent.parameters())


def test_phase3_value_targets_are_the_actual_returns_of_the_selected_emotion(episodes):
    agent = make_agent(return_scale=0.5)
    per_step = agent.phase3_value(episodes)
    values = agent.model.emotion_values(agent.model.encode(episodes).hidden)
    b, t = 0, 2
    e = int(episodes["emotion"][b, t])
    torch.testing.assert_close(per_step[b, t], (values[b, t, e] - 0.5 * episodes["return"][b, t]) ** 2)


def test_phase4_policy_imitates_the_stored_visit_distribution(episodes):
    agent = make_agent()
    per_step = agent.phase4_policy(episodes)
    policy = agent.model.heads(agent.model.encode(episodes).hidden)["policy"]
    b, t = 2, 1
    expected = -(episodes["visit_distribution"][b, t] * torch.log(policy[b, t])).sum()
    torch.testing.assert_close(per_step[b, t], expected)
    # the loss is minimised (to the entropy) by the visit distribution itself
    target = episodes["visit_distribution"][b, t]
    entropy = -(target * target.log()).sum()
    assert per_step[b, t] >= entropy


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
    from tensordict import TensorDict

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


def test_episode_and_timestep_schedules_compute_the_same_losses(episodes):
    """SPEC_NOTES 11: for the same parameters, the per-step losses of a whole-episode pass are those of spec 2.3's
    per-timestep pass over sequence_t."""
    agent = make_agent()
    whole = {
        "dynamics": agent.phase1_dynamics(episodes),
        "action": agent.phase2_action(episodes)[0],
        "value": agent.phase3_value(episodes),
        "policy": agent.phase4_policy(episodes),
    }
    for b, length in enumerate(episodes["mask"].sum(-1).tolist()):
        for t in range(length):
            prefix = episodes[b : b + 1, : t + 1]
            per_t = {
                "dynamics": agent.phase1_dynamics(prefix),
                "action": agent.phase2_action(prefix)[0],
                "value": agent.phase3_value(prefix),
                "policy": agent.phase4_policy(prefix),
            }
            for phase in PHASES:
                torch.testing.assert_close(per_t[phase][0, t], whole[phase][b, t], msg=f"{phase} b={b} t={t}")


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

    def infinite_slope(batch):
        value = agent.model.emotion_values(agent.model.encode(batch).hidden)[..., 0]
        return (value - value.detach()).abs().sqrt()

    monkeypatch.setattr(agent, "phase3_value", infinite_slope)
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


def test_padding_does_not_count(episodes):
    agent = make_agent()
    per_step = agent.phase3_value(episodes)
    garbage = episodes.clone()
    garbage["return"][~garbage["mask"]] = 1e6
    torch.testing.assert_close(
        masked_mean(agent.phase3_value(garbage), garbage["mask"]), masked_mean(per_step, episodes["mask"])
    )


def test_literal_phase1_never_reads_the_taken_action_and_the_taken_option_does(episodes):
    """Why ``dynamics_action`` matters (README, "Decisions"): with the literal input stopgrad(A_e(h)), phase 1 gives
    the same loss whatever action was actually taken, so the dynamics head cannot learn an action's effect and
    the section 4.3 gradient through it carries no information about actions; with ``taken`` it can."""
    t = 5
    flipped = episodes.clone()
    flipped["action"][:, t] = (flipped["action"][:, t] + 1) % N_ACTIONS  # a_t enters h only from t + 1 on
    literal, taken = make_agent(), make_agent(dynamics_action="taken")
    torch.testing.assert_close(
        literal.phase1_dynamics(episodes)[:, t], literal.phase1_dynamics(flipped)[:, t], rtol=0, atol=0
    )
    assert not torch.allclose(taken.phase1_dynamics(episodes)[:, t], taken.phase1_dynamics(flipped)[:, t])


def test_context_window_sizes_the_model_and_makes_the_policy_plan_on_recent_steps():
    whole = make_agent()
    assert whole.model.context_window == 12 and whole.make_policy().context_window == 12
    windowed = make_agent(context_window=4)
    assert windowed.model.context_window == 4  # 4 real steps (the imagined state has its own position)
    policy = windowed.make_policy(greedy=True)
    assert policy.context_window == 4
    with pytest.raises(ValueError, match="context_window"):
        make_agent(context_window=0)
