"""The trained CartPole model shipped in models/ loads safely and balances the pole."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from emotion_rl import EmotionAgent
from emotion_rl.data.envs import make_env
from emotion_rl.data.rollout import evaluate_policy
from emotion_rl.viz import load_agent

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cartpole.ckpt"
PREVIOUS = ROOT / "models" / "cartpole_before_values.ckpt"
"""The model shipped before the values screens (models/README.md), converted from the flat hyper-parameters."""


def test_the_shipped_cartpole_model_loads_with_weights_only_and_balances():
    checkpoint = torch.load(MODEL, weights_only=True)
    assert "optimizer_states" not in checkpoint and "EmotionDataModule" not in checkpoint  # weights only: small
    agent = load_agent(MODEL)
    result = evaluate_policy(make_env("CartPole-v1", 2, seed=12345), agent.make_policy(greedy=True), 150)
    assert torch.equal(result["episode_length"], torch.tensor([150, 150]))  # an untrained agent falls within ~40


OLD_HPARAMS = {  # models/cartpole_before_values.ckpt's hyper-parameters before the components (decision 23)
    **dict(n_emotions=8, d_model=64, n_layers=2, n_heads=4, head_hidden=None, num_simulations=50, c_puct=1.0),
    **dict(max_depth=3, q_transform="minmax_completed", completed_value="child", tie_break="lowest"),
    **dict(dirichlet_alpha=0.3, dirichlet_fraction=0.0, root_rule="gumbel", gumbel_considered=8),
    **dict(gumbel_c_visit=50.0, gumbel_c_scale=0.1, value_readout="mean", temperature_start=1.0),
    **dict(temperature_end=0.1, temperature_decay_frames=20000, head_lr=0.001, transformer_lr=0.0003),
    **dict(phase2_objective="assigned", dynamics_action="taken", schedule="episode", return_scale=0.02),
    **dict(gradient_clip_val=1.0, imagined_value_weight=1.0, action_entropy_coef=0.0, action_value_norm=False),
    **dict(action_awr_coef=0.0, action_awr_beta=1.0, action_max_update=None, phase2_updates_transformer=False),
    **dict(dynamics_all_emotions=True, value_target="monte_carlo", value_n_step=5, value_lambda=0.95),
    **dict(target_tau=0.005, log_diagnostics=True, diagnostics_interval=1000, shared_update=False),
    **dict(imagined_action="one_hot", action_coverage_coef=0.0, improvement_scale=2.0),
    **dict(improvement_mixture="prior", policy_balance_coef=0.0, value_all_emotions=True, value_gamma=0.98),
    **dict(max_episode_steps=500, obs_dim=4, context_window=32, n_actions=2),
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def _converter():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", ROOT / "benchmarks" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_model_is_its_old_checkpoint_converted():
    """benchmarks/convert_checkpoint.py maps the old flat hyper-parameters onto the components the model now holds;
    an option that was removed is refused; target_tau and an EMA target network's weights, which Monte-Carlo targets
    never read, are dropped."""
    convert = _converter()
    assert convert.convert_hparams(OLD_HPARAMS) == torch.load(PREVIOUS, weights_only=True)["hyper_parameters"]
    with pytest.raises(ValueError, match="tie_break"):
        convert.convert_hparams({**OLD_HPARAMS, "tie_break": "random"})
    current = torch.load(PREVIOUS, weights_only=True)["hyper_parameters"]  # a planner naming its root flat, as once
    flat_root = {**current["planner"]["init_args"], "root_rule": "gumbel", "gumbel_considered": 8}
    flat_root.update(gumbel_c_visit=50.0, gumbel_c_scale=0.1, tie_break="lowest", value_readout="mean")
    assert convert.convert_hparams({**current, "planner": {"init_args": flat_root}}) == current
    with pytest.raises(ValueError, match="action_awr_coef"):
        convert.convert_hparams({**OLD_HPARAMS, "action_awr_coef": 0.5})
    with pytest.raises(ValueError, match="improvement"):
        convert.convert_hparams({**OLD_HPARAMS, "phase2_objective": "improvement"})
    for target in ("td_lambda", "n_step"):
        with pytest.raises(ValueError, match=f"value_target='{target}'"):
            convert.convert_hparams({**OLD_HPARAMS, "value_target": target})
    assert "target_tau" not in convert.convert_hparams({**OLD_HPARAMS, "target_tau": 0.1})["value_loss"]["init_args"]
    old = {"hyper_parameters": OLD_HPARAMS, "state_dict": {"model.w": torch.zeros(1), "target_model.w": torch.ones(1)}}
    assert set(convert.convert(old)["state_dict"]) == {"model.w"}


def test_a_checkpoint_in_the_current_form_loses_target_tau_and_a_bootstrapped_target_is_refused():
    """The component form of before the bootstrapped targets were removed: a value loss holding target_tau (inert
    with Monte-Carlo targets) loads once the converter dropped it; NStep and TDLambda are refused by name."""
    convert = _converter()
    current = torch.load(MODEL, weights_only=True)["hyper_parameters"]
    with pytest.raises(ValueError, match="already in the current form"):
        convert.convert_hparams(current)
    value_loss = current["value_loss"]
    with_tau = {**current, "value_loss": {**value_loss, "init_args": {**value_loss["init_args"], "target_tau": 0.005}}}
    assert convert.convert_hparams(with_tau) == current
    for removed in ("emotion_rl.TDLambda", "emotion_rl.NStep"):
        target = {"class_path": removed, "init_args": {}}
        bootstrapped = {
            **with_tau,
            "value_loss": {**value_loss, "init_args": {**value_loss["init_args"], "target": target}},
        }
        with pytest.raises(ValueError, match=f"value_loss.target={removed}"):
            convert.convert_hparams(bootstrapped)
    checkpoint = {"hyper_parameters": with_tau, "state_dict": {"model.w": torch.zeros(1)}}
    assert convert.convert(checkpoint)["hyper_parameters"] == current and not convert.is_current(checkpoint)


def test_the_search_arguments_removed_since_are_dropped_at_their_inert_values_and_refused_otherwise(tmp_path):
    """``completed_value: child``, a Gumbel root's ``chooses: true`` and a pUCT root's Dirichlet noise at fraction 0
    trained as the current agent does: the converter drops them (as it did from the shipped models). Any other value,
    and a removed component, is refused by name; ``EmotionAgent.load`` of such a checkpoint names the converter."""
    convert = _converter()
    current = torch.load(MODEL, weights_only=True)["hyper_parameters"]
    planner, root = current["planner"], current["planner"]["init_args"]["root_rule"]

    def with_planner(completed_value="child", root_rule=None) -> dict:
        root_rule = root_rule or {**root, "init_args": {**root["init_args"], "chooses": True}}
        init_args = {**planner["init_args"], "completed_value": completed_value, "root_rule": root_rule}
        return {**current, "planner": {**planner, "init_args": init_args}}

    assert convert.convert_hparams(with_planner()) == current
    puct = {"class_path": "emotion_rl.PUCTRoot", "init_args": {"dirichlet_alpha": 0.3, "dirichlet_fraction": 0.0}}
    converted = convert.convert_hparams(with_planner(root_rule=puct))
    assert converted["planner"]["init_args"]["root_rule"] == {"class_path": "emotion_rl.PUCTRoot", "init_args": {}}
    with pytest.raises(ValueError, match=r"EmotionMCTS\(completed_value='parent'\)"):
        convert.convert_hparams(with_planner("parent"))
    with pytest.raises(ValueError, match=r"GumbelRoot\(chooses=False\)"):
        convert.convert_hparams(with_planner(root_rule={**root, "init_args": {"chooses": False}}))
    noisy = {**puct, "init_args": {"dirichlet_alpha": 0.3, "dirichlet_fraction": 0.25}}
    with pytest.raises(ValueError, match=r"PUCTRoot\(dirichlet_fraction=0.25\)"):
        convert.convert_hparams(with_planner(root_rule=noisy))
    temperaments = {**current, "action_loss": {"class_path": "emotion_rl.TemperamentActionLoss", "init_args": {}}}
    with pytest.raises(ValueError, match="action_loss=TemperamentActionLoss"):
        convert.convert_hparams(temperaments)
    with pytest.raises(ValueError, match="dirichlet_fraction=0.25"):
        convert.convert_hparams({**OLD_HPARAMS, "dirichlet_fraction": 0.25})
    old = tmp_path / "old.ckpt"
    for hparams, name in ((with_planner(), "completed_value"), (temperaments, "TemperamentActionLoss")):
        torch.save({**torch.load(MODEL, weights_only=True), "hyper_parameters": hparams}, old)
        with pytest.raises(ValueError, match=rf"{name}.* was removed.*benchmarks/convert_checkpoint.py"):
            EmotionAgent.load(old)
