"""The four phase losses (spec 2.2, 2.4): gradient flow, stop-gradients, targets, weights; no agent, no Trainer."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from emotion_rl.losses import (
    ACTION_LOSSES,
    ActionLoss,
    DynamicsLoss,
    LiteralActionLoss,
    MaxValueActionLoss,
    PolicyLoss,
    ValueLoss,
    action_loss_class,
    masked_mean,
)
from emotion_rl.model import EmotionModel

from conftest import N_ACTIONS, N_EMOTIONS, OBS_DIM, random_episodes

GROUPS = ("transformer", "dynamics", "action", "value", "policy")
PHASES = ("dynamics", "action", "value", "policy")


def make_model() -> EmotionModel:
    torch.manual_seed(0)
    return EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=1, n_heads=2, context_length=13).double()


def make_losses(model: EmotionModel, dynamics_action="action_head", phase2="max_value", return_scale=1.0) -> dict:
    return {
        "dynamics": DynamicsLoss(model, action_input=dynamics_action),
        "action": ACTION_LOSSES[phase2](model),
        "value": ValueLoss(model, return_scale=return_scale),
        "policy": PolicyLoss(model),
    }


def grad_by_group(model: EmotionModel) -> dict[str, float]:
    """Total absolute gradient per parameter group (0.0 for None)."""
    groups = {"transformer": model.transformer_parameters(), **model.head_parameters()}
    return {
        name: sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in params)
        for name, params in groups.items()
    }


def backward_of(loss_module, episodes) -> dict[str, float]:
    loss_module.model.zero_grad(set_to_none=True)
    out = loss_module(episodes)
    out[f"loss_{loss_module.name}"].backward()
    return grad_by_group(loss_module.model)


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
    grads = backward_of(make_losses(make_model())[phase], episodes)
    for group in GROUPS:
        if group in trained:
            assert grads[group] > 0, f"phase {phase}: {group} got no gradient"
        else:
            assert grads[group] == 0, f"phase {phase}: {group} must stay frozen, got {grads[group]}"


def test_phase1_with_the_taken_action_also_freezes_the_action_heads(episodes):
    grads = backward_of(DynamicsLoss(make_model(), action_input="taken"), episodes)
    assert grads["dynamics"] > 0 and grads["transformer"] > 0 and grads["action"] == 0


def test_phase1_target_is_the_next_observation_for_the_selected_emotion(episodes):
    model = make_model()
    per_step = DynamicsLoss(model).per_step(episodes)["loss"]
    h = model.encode(episodes).hidden
    b, t = 1, 4
    e = int(episodes["emotion"][b, t])
    action = torch.softmax(model.action_logits(h[b, t]), -1)
    z = model.dynamics(h[b, t], action)[e]
    expected = (z - episodes["next_observation"][b, t]).pow(2).sum()
    torch.testing.assert_close(per_step[b, t], expected)


def test_phase1_taken_action_option_feeds_the_one_hot_action(episodes):
    model = make_model()
    per_step = DynamicsLoss(model, action_input="taken").per_step(episodes)["loss"]
    h = model.encode(episodes).hidden
    b, t = 0, 5
    e, a = int(episodes["emotion"][b, t]), int(episodes["action"][b, t])
    one_hot = torch.nn.functional.one_hot(torch.tensor(a), N_ACTIONS).double().expand(N_EMOTIONS, -1)
    z = model.dynamics(h[b, t], one_hot)[e]
    torch.testing.assert_close(per_step[b, t], (z - episodes["next_observation"][b, t]).pow(2).sum())


def test_literal_phase1_never_reads_the_taken_action_and_the_taken_option_does(episodes):
    """Why ``dynamics_action`` matters (decision 8): with the literal input stopgrad(A_e(h)), phase 1 gives the same
    loss whatever action was actually taken, so the dynamics head cannot learn an action's effect and the section
    4.3 gradient through it carries no information about actions; with ``taken`` it can."""
    t = 5
    flipped = episodes.clone()
    flipped["action"][:, t] = (flipped["action"][:, t] + 1) % N_ACTIONS  # a_t enters h only from t + 1 on
    literal, taken = DynamicsLoss(make_model()), DynamicsLoss(make_model(), action_input="taken")
    torch.testing.assert_close(
        literal.per_step(episodes)["loss"][:, t], literal.per_step(flipped)["loss"][:, t], rtol=0, atol=0
    )
    assert not torch.allclose(taken.per_step(episodes)["loss"][:, t], taken.per_step(flipped)["loss"][:, t])


def test_phase2_literal_objective_is_zero_with_zero_gradient(episodes):
    """decision 7: MSE(Z(h, A(h)), stopgrad(Z(h, A(h)))) is identically 0 and so is its gradient."""
    loss_module = LiteralActionLoss(make_model())
    loss = loss_module.per_step(episodes)["loss"]
    assert torch.equal(loss, torch.zeros_like(loss))
    for group, total in backward_of(loss_module, episodes).items():
        assert total == 0, f"literal phase 2 gave {group} a gradient"


def test_phase2_max_value_raises_the_imagined_value(episodes):
    """Section 4.3: a step along the phase-2 gradient raises V(Z(h, A(h))) (the frozen critic's mean value)."""
    model = make_model()
    loss_module = MaxValueActionLoss(model)
    before = loss_module(episodes)["imagined_value"]
    optimizer = torch.optim.SGD(model.head_parameters()["action"], lr=1e-2)
    model.zero_grad(set_to_none=True)
    loss_module(episodes)["loss_action"].backward()
    optimizer.step()
    assert loss_module(episodes)["imagined_value"] > before


def test_phase2_imagined_value_sees_only_real_steps_up_to_t(episodes):
    """The imagined token at t attends to real tokens 0..t: changing step t+1 leaves step t's value unchanged."""
    loss_module = MaxValueActionLoss(make_model())
    value = loss_module.per_step(episodes)["imagined_value"]
    changed = episodes.clone()
    changed["observation"][:, 6:] += 1.0
    changed_value = loss_module.per_step(changed)["imagined_value"]
    torch.testing.assert_close(value[:, :6], changed_value[:, :6], rtol=0, atol=0)
    assert not torch.allclose(value[0, 6:], changed_value[0, 6:])


def test_phase2_imagined_value_matches_the_model_evaluating_the_imagined_state(episodes):
    """The whole-episode imagined pass equals model.evaluate(sequence_t, imagined_observation=z_t) (spec 1.5)."""
    model = make_model()
    value = MaxValueActionLoss(model).per_step(episodes)["imagined_value"]
    h = model.encode(episodes).hidden
    b, t = 1, 3
    e = int(episodes["emotion"][b, t])
    action = torch.softmax(model.action_logits(h[b, t]), -1)
    z = model.dynamics(h[b, t], action)[e]
    out = model.evaluate(episodes[b : b + 1, : t + 1], imagined_observation=z.unsqueeze(0))
    torch.testing.assert_close(value[b, t], out["values"][0].mean())


def test_phase2_leaves_requires_grad_flags_as_they_were(episodes):
    model = make_model()
    MaxValueActionLoss(model)(episodes)
    LiteralActionLoss(model)(episodes)
    assert all(p.requires_grad for p in model.parameters())


def test_phase3_value_targets_are_the_actual_returns_of_the_selected_emotion(episodes):
    model = make_model()
    per_step = ValueLoss(model, return_scale=0.5).per_step(episodes)["loss"]
    values = model.emotion_values(model.encode(episodes).hidden)
    b, t = 0, 2
    e = int(episodes["emotion"][b, t])
    torch.testing.assert_close(per_step[b, t], (values[b, t, e] - 0.5 * episodes["return"][b, t]) ** 2)


def test_phase4_policy_imitates_the_stored_visit_distribution(episodes):
    model = make_model()
    per_step = PolicyLoss(model).per_step(episodes)["loss"]
    policy = model.heads(model.encode(episodes).hidden)["policy"]
    b, t = 2, 1
    expected = -(episodes["visit_distribution"][b, t] * torch.log(policy[b, t])).sum()
    torch.testing.assert_close(per_step[b, t], expected)
    # the loss is minimised (to the entropy) by the visit distribution itself
    target = episodes["visit_distribution"][b, t]
    entropy = -(target * target.log()).sum()
    assert per_step[b, t] >= entropy


def test_padding_does_not_count(episodes):
    loss_module = ValueLoss(make_model())
    garbage = episodes.clone()
    garbage["return"][~garbage["mask"]] = 1e6
    torch.testing.assert_close(loss_module(garbage)["loss_value"], loss_module(episodes)["loss_value"])


@pytest.mark.parametrize("phase", PHASES)
def test_the_loss_is_the_weighted_mean_over_steps_and_weight_overrides_mask(phase, episodes):
    """``loss_<phase>`` = masked mean of the per-step loss over ``mask``, or over the ``weight`` key when given."""
    loss_module = make_losses(make_model(), dynamics_action="taken")[phase]
    per_step = loss_module.per_step(episodes)["loss"]
    torch.testing.assert_close(loss_module(episodes)[f"loss_{phase}"], masked_mean(per_step, episodes["mask"]))
    weight = torch.rand(episodes.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weighted = episodes.clone().set("weight", weight * episodes["mask"])
    expected = (per_step * weighted["weight"]).sum() / weighted["weight"].sum()
    torch.testing.assert_close(loss_module(weighted)[f"loss_{phase}"], expected)


def test_episode_and_timestep_passes_compute_the_same_losses(episodes):
    """decision 11: for the same parameters, the per-step losses of a whole-episode pass are those of spec 2.3's
    per-timestep pass over sequence_t."""
    losses = make_losses(make_model())
    whole = {phase: losses[phase].per_step(episodes)["loss"] for phase in PHASES}
    for b, length in enumerate(episodes["mask"].sum(-1).tolist()):
        for t in range(length):
            prefix = episodes[b : b + 1, : t + 1]
            for phase in PHASES:
                per_t = losses[phase].per_step(prefix)["loss"]
                torch.testing.assert_close(per_t[0, t], whole[phase][b, t], msg=f"{phase} b={b} t={t}")


def test_modules_declare_their_keys_and_return_loss_entries(episodes):
    for phase, loss_module in make_losses(make_model()).items():
        out = loss_module(episodes)
        assert isinstance(out, TensorDict) and set(out.keys()) == set(loss_module.out_keys), phase
        assert f"loss_{phase}" in loss_module.out_keys
        assert {"observation", "action", "emotion", "reward", "mask", "weight"} <= set(loss_module.in_keys)
        missing = [key for key in loss_module.in_keys if key != "weight" and key not in episodes.keys()]
        assert not missing, f"{phase} declares keys a batch does not have: {missing}"


class _ScaledMaxValue(MaxValueActionLoss):
    """A user's phase-2 objective, found by its dotted path."""

    def objective(self, encoding, action, emotion):
        loss, value = super().objective(encoding, action, emotion)
        return 2 * loss, value


def test_phase2_objective_by_short_name_or_dotted_path():
    assert action_loss_class("max_value") is MaxValueActionLoss
    assert action_loss_class("literal") is LiteralActionLoss
    assert action_loss_class("emotion_rl.losses.LiteralActionLoss") is LiteralActionLoss
    assert action_loss_class(f"{__name__}._ScaledMaxValue") is _ScaledMaxValue
    for bad in ("mse", "emotion_rl.losses.masked_mean", "emotion_rl.nowhere.Loss", "torch.nn.MSELoss"):
        with pytest.raises(ValueError, match="phase2_objective"):
            action_loss_class(bad)
    assert issubclass(_ScaledMaxValue, ActionLoss)


def test_unknown_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="dynamics_action"):
        DynamicsLoss(make_model(), action_input="sampled")
    with pytest.raises(ValueError, match="return_scale"):
        ValueLoss(make_model(), return_scale=0.0)
