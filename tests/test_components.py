"""Components written as class_path + init_args (emotion_rl/config.py, decision 23): the planner and the four phase
losses are given to the agent as objects, its hyper-parameters and checkpoints hold them as plain values, and a
checkpoint rebuilds the same components, whether the agent came from a config (the CLI) or from Python objects."""

from __future__ import annotations

import copy
import inspect
import pickle
from functools import partial

import lightning as L
import pytest
import torch
from tensordict import TensorDict, TensorDictBase

from emotion_rl import (
    AssignedActionLoss,
    Configurable,
    DynamicsLoss,
    EmotionAgent,
    EmotionDataModule,
    EmotionMCTS,
    EmotionModel,
    GumbelRoot,
    MaxValueActionLoss,
    MonteCarlo,
    PolicyLoss,
    PUCTRoot,
    RootDecision,
    RootRule,
    ValueEstimator,
    ValueLoss,
    instantiate,
    to_config,
)
from emotion_rl.agent import COMPONENTS
from emotion_rl.checkpoint import load_checkpoint
from emotion_rl.cli import main
from emotion_rl.losses import ActionLoss, LiteralActionLoss
from emotion_rl.mcts import loop
from emotion_rl.mcts.rules import visit_distribution

from conftest import CONFIG, TINY, random_history


class ScaledValueLoss(ValueLoss):
    """A value loss defined outside the package: phase 3's loss times ``scale``; counts its calls."""

    calls = 0

    def __init__(self, model, gamma: float, scale: float = 1.0, **kwargs) -> None:
        super().__init__(model, gamma, **kwargs)
        self.scale = scale

    def per_step(self, batch: TensorDictBase, encoding=None) -> TensorDict:
        ScaledValueLoss.calls += 1
        out = super().per_step(batch, encoding)
        out["loss"] = self.scale * out["loss"]
        return out


@loop.kernel
def rarest_first(tree, selection, env, root, simulation, state) -> int:
    """The first simulation of each environment takes the emotion its prior likes least; the others select by pUCT."""
    if simulation == 0:
        return state[0][env]
    return loop.select_child(tree, selection, root, env)


class ShrunkReturn(ValueEstimator):
    """A value target defined outside the package: the Monte Carlo targets times ``shrink``; counts its calls."""

    calls = 0
    reads = ("return",)

    def __init__(self, shrink: float = 1.0) -> None:
        self.shrink = shrink

    def targets(self, batch, network, gamma, return_scale, with_next=True):
        ShrunkReturn.calls += 1
        y, y_next = MonteCarlo().targets(batch, network, gamma, return_scale, with_next)
        return self.shrink * y, None if y_next is None else self.shrink * y_next


class RarestFirstRoot(RootRule):
    """A root rule defined outside the package (compiled with ``loop.kernel``); counts its searches."""

    select = staticmethod(rarest_first)
    starts = 0

    def start(self, tree, num_simulations, draw) -> tuple:
        RarestFirstRoot.starts += 1
        return (tree.prior[tree.roots].argmin(axis=-1),)

    def finish(self, tree, selection, state) -> RootDecision:
        return RootDecision(visit_distribution(tree), None)


# ---------------------------------------------------------------------------------------------- to_config
def test_a_configurable_records_its_arguments_with_defaults_and_keeps_them_through_copies():
    root = GumbelRoot(considered=4)
    planner = EmotionMCTS(7, root_rule=root)
    expected = {**EmotionMCTS().init_args(), "num_simulations": 7, "root_rule": root}
    assert planner.init_args() == expected
    assert root.init_args() == {"considered": 4, "c_visit": 50.0, "c_scale": 0.1}
    for copied in (copy.deepcopy(planner), pickle.loads(pickle.dumps(planner))):  # worker collectors pickle it
        assert to_config(copied) == to_config(planner)
    assert MonteCarlo(True).init_args() == {"bootstrap_truncation": True}
    assert MonteCarlo().init_args() == {"bootstrap_truncation": False} and ShrunkReturn().init_args() == {"shrink": 1.0}


def test_a_configurables_repr_is_written_from_its_init_args():
    """Every argument by name, defaults included, nested components by their own repr."""
    gumbel = "GumbelRoot(considered=8, c_visit=50.0, c_scale=0.1)"
    planner = EmotionMCTS(50, q_transform="minmax_completed", root_rule=GumbelRoot())
    assert repr(planner) == (
        "EmotionMCTS(num_simulations=50, c_puct=1.0, max_depth=3, q_transform='minmax_completed', "
        f"min_spread=0.0, root_rule={gumbel})"
    )
    assert repr(GumbelRoot(4)) == "GumbelRoot(considered=4, c_visit=50.0, c_scale=0.1)"
    assert repr(PUCTRoot()) == "PUCTRoot()"
    assert repr(ShrunkReturn(0.5)) == "ShrunkReturn(shrink=0.5)" and repr(RarestFirstRoot()) == "RarestFirstRoot()"
    assert repr(MonteCarlo(True)) == "MonteCarlo(bootstrap_truncation=True)"


def test_to_config_writes_instances_classes_and_partials_as_plain_nested_values():
    assert to_config(EmotionMCTS(7)) == {
        "class_path": "emotion_rl.EmotionMCTS",
        "init_args": EmotionMCTS(7).init_args(),
    }
    assert to_config(DynamicsLoss) == {
        "class_path": "emotion_rl.DynamicsLoss",
        "init_args": {"action_input": "action_head", "all_emotions": False, "imagined_weight": 0.0},
    }
    loss = to_config(partial(ValueLoss, return_scale=0.5, target=MonteCarlo(bootstrap_truncation=True)))
    assert loss == {
        "class_path": "emotion_rl.ValueLoss",
        "init_args": {
            "return_scale": 0.5,
            "target": {"class_path": "emotion_rl.MonteCarlo", "init_args": {"bootstrap_truncation": True}},
            "imagined_weight": 0.0,
            "all_emotions": False,
        },
    }, "model and gamma have no default: the agent calls the factory with them"
    assert to_config(loss) == loss, "a config is already plain"
    assert to_config({"class_path": "emotion_rl.losses.value.ValueLoss"})["class_path"] == "emotion_rl.ValueLoss"
    assert to_config({"a": [1, (2.0, "x")], "b": None}) == {"a": [1, [2.0, "x"]], "b": None}
    assert to_config(ScaledValueLoss)["class_path"] == f"{__name__}.ScaledValueLoss"


def test_instantiate_builds_what_to_config_wrote_nested_and_with_the_callers_arguments(tiny_model):
    config = to_config(EmotionMCTS(5, q_transform="minmax", root_rule=GumbelRoot(considered=3)))
    assert config["init_args"]["root_rule"] == {
        "class_path": "emotion_rl.GumbelRoot",
        "init_args": {"considered": 3, "c_visit": 50.0, "c_scale": 0.1},
    }
    planner = instantiate(config)
    assert type(planner) is EmotionMCTS and planner.num_simulations == 5 and planner.q_transform == "minmax"
    assert type(planner.root_rule) is GumbelRoot and planner.root_rule.considered == 3
    loss = instantiate(to_config(partial(ValueLoss, target=ShrunkReturn(0.5))), tiny_model, 0.9)
    assert type(loss) is ValueLoss and type(loss.target) is ShrunkReturn and loss.target.shrink == 0.5
    assert loss.gamma == 0.9 and loss.model is tiny_model


def test_what_cannot_be_written_or_built_is_refused_with_the_reason():
    class Local(Configurable):
        pass

    with pytest.raises(TypeError, match="cannot be written as plain values"):
        to_config(lambda model: ValueLoss(model, 0.9))
    with pytest.raises(TypeError, match="inside a function"):
        to_config(Local())
    with pytest.raises(TypeError, match="keyword arguments"):
        to_config(partial(ValueLoss, None))  # a positional argument: the model is the caller's
    with pytest.raises(ValueError, match=r"has no argument \['discount'\]"):
        to_config({"class_path": "emotion_rl.ValueLoss", "init_args": {"discount": 0.9}})
    with pytest.raises(ValueError, match="does not name an importable class"):
        instantiate({"class_path": "emotion_rl.NoSuchLoss"})
    with pytest.raises(ValueError, match="class_path and init_args only"):
        to_config({"class_path": "emotion_rl.ValueLoss", "lr": 1})


# ---------------------------------------------------------------------------------------------- the agent
def test_the_agent_has_at_most_25_hyperparameters_and_shares_none_with_its_components():
    arguments = set(inspect.signature(EmotionAgent).parameters)
    assert len(arguments) <= 25, sorted(arguments)
    components = [EmotionMCTS, DynamicsLoss, ActionLoss, MaxValueActionLoss, LiteralActionLoss, AssignedActionLoss]
    components += [ValueLoss, PolicyLoss, MonteCarlo]
    for component in components:
        settings = set(to_config(component)["init_args"])
        assert not arguments & settings, f"{component.__name__} settings also declared by the agent"
    assert set(COMPONENTS) <= arguments


def _tiny_agent(**components) -> EmotionAgent:
    torch.manual_seed(0)
    return EmotionAgent(4, 2, 12, d_model=16, n_layers=1, n_heads=2, **components)


def _same_components(loaded: EmotionAgent, agent: EmotionAgent) -> None:
    assert dict(loaded.hparams) == dict(agent.hparams)
    assert type(loaded.planner) is type(agent.planner) and to_config(loaded.planner) == to_config(agent.planner)
    assert loaded.planner.num_simulations == agent.planner.num_simulations
    for mine, theirs in zip(loaded.losses, agent.losses, strict=True):
        assert type(mine) is type(theirs)
        assert to_config(mine.__class__) == to_config(theirs.__class__)
    for name, value in agent.state_dict().items():  # the model's weights
        assert torch.equal(loaded.state_dict()[name], value), name


def test_python_objects_go_through_a_checkpoint_and_come_back_the_same(tmp_path):
    """Built in Python with objects, fitted a few batches, saved by Lightning; the checkpoint loads with
    ``weights_only=True`` and ``load_from_checkpoint`` rebuilds the same planner and losses."""
    L.seed_everything(0, verbose=False)
    data = EmotionDataModule(
        "CartPole-v1", num_envs=2, frames_per_batch=8, batch_size=2, warmup_episodes=1, time_limit=8, gamma=0.9
    )
    agent = EmotionAgent(
        data.obs_dim,
        data.n_actions,
        data.max_episode_steps,
        d_model=16,
        n_layers=1,
        n_heads=2,
        planner=EmotionMCTS(3, q_transform="minmax_completed", root_rule=GumbelRoot()),
        dynamics_loss=partial(DynamicsLoss, action_input="taken", all_emotions=True),
        action_loss=partial(AssignedActionLoss, update_transformer=False),
        value_loss=partial(ValueLoss, return_scale=0.1, target=ShrunkReturn(0.5), imagined_weight=1.0),
        gamma=0.9,
    )
    trainer = L.Trainer(
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    data.connect(agent)
    trainer.fit(agent, datamodule=data)
    path = tmp_path / "agent.ckpt"
    trainer.save_checkpoint(path)
    hparams = load_checkpoint(path)["hyper_parameters"]  # weights_only: plain values
    target = {"class_path": f"{__name__}.ShrunkReturn", "init_args": {"shrink": 0.5}}
    assert hparams["value_loss"]["init_args"]["target"] == target
    loaded = EmotionAgent.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    _same_components(loaded, agent)
    assert type(loaded.losses.value.target) is ShrunkReturn and loaded.losses.value.target.shrink == 0.5
    assert loaded.losses.value.gamma == 0.9


def test_a_root_rule_of_ones_own_is_the_search_s_root():
    """One simulation: it goes where the rule says (the prior's least likely emotion), not where pUCT would."""
    torch.manual_seed(0)
    model = EmotionModel(4, 2, d_model=16, n_layers=1, n_heads=2).double().eval()
    history = random_history(3, 4, obs_dim=4, n_actions=2)
    rarest = EmotionMCTS(1, root_rule=RarestFirstRoot()).search(model, history)
    puct = EmotionMCTS(1).search(model, history)
    assert torch.equal(rarest["visit_counts"].argmax(-1), rarest["prior"].argmin(-1))
    assert not torch.equal(puct["visit_counts"], rarest["visit_counts"])
    assert "selected_emotion" not in rarest.keys()


def test_a_root_rule_and_a_loss_of_ones_own_run_a_fit_from_the_config_and_its_checkpoint_rebuilds_them(tmp_path):
    """A root rule, a value loss and a value target defined in this file, named by class_path on the command line,
    run a short fit; the run's checkpoint (written by the CLI) loads back with the same components, their options
    included."""
    logs = tmp_path / "runs"
    ScaledValueLoss.calls = RarestFirstRoot.starts = ShrunkReturn.calls = 0
    cli = main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            f"--model.value_loss={__name__}.ScaledValueLoss",
            "--model.value_loss.scale=0.5",
            f"--model.value_loss.target={__name__}.ShrunkReturn",
            "--model.value_loss.target.shrink=0.5",
            f"--model.planner.init_args.root_rule={__name__}.RarestFirstRoot",
            "--trainer.max_steps=8",
            f"--trainer.logger.init_args.save_dir={logs}",
        ]
    )
    value = cli.model.losses.value
    assert type(value) is ScaledValueLoss and value.scale == 0.5 and value.return_scale == 0.02  # base.yaml's kept
    assert type(value.target) is ShrunkReturn and value.target.shrink == 0.5 and value.gamma == 0.98  # data.gamma
    assert ScaledValueLoss.calls >= 2 and ShrunkReturn.calls >= 2, "the loss from the config did not train"
    assert type(cli.model.planner.root_rule) is RarestFirstRoot and RarestFirstRoot.starts >= 2, "nor searched"
    last = logs / "cartpole" / "version_0" / "checkpoints" / "last.ckpt"
    hparams = load_checkpoint(last)["hyper_parameters"]
    assert hparams["value_loss"]["class_path"] == f"{__name__}.ScaledValueLoss"
    assert hparams["value_loss"]["init_args"]["scale"] == 0.5 and hparams["gamma"] == 0.98
    assert hparams["planner"] == to_config(cli.model.planner)
    loaded = EmotionAgent.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    _same_components(loaded, cli.model)
    assert loaded.losses.value.scale == 0.5 and type(loaded.losses.action) is AssignedActionLoss
    assert type(loaded.losses.value.target) is ShrunkReturn and loaded.losses.value.target.shrink == 0.5
    assert hparams["planner"]["init_args"]["root_rule"] == {
        "class_path": f"{__name__}.RarestFirstRoot",
        "init_args": {},
    }
    assert type(loaded.planner.root_rule) is RarestFirstRoot


def test_the_shipped_config_builds_the_agent_the_python_objects_build():
    """The same agent from configs/cartpole.yaml (jsonargparse) and from the objects a user would write."""
    cli = main([f"--config={CONFIG}", "--trainer.logger=false"], run=False)
    python = EmotionAgent(
        cli.datamodule.obs_dim,
        cli.datamodule.n_actions,
        cli.datamodule.max_episode_steps,
        context_window=32,
        imagined_action="one_hot",
        planner=EmotionMCTS(50, q_transform="minmax_completed", min_spread=0.1, root_rule=GumbelRoot()),
        dynamics_loss=partial(DynamicsLoss, action_input="taken", all_emotions=True),
        action_loss=partial(AssignedActionLoss, update_transformer=False),
        value_loss=partial(
            ValueLoss,
            return_scale=0.02,
            target=MonteCarlo(bootstrap_truncation=True),
            imagined_weight=1.0,
            all_emotions=True,
        ),
        gamma=0.98,
        head_lr=1e-3,
        transformer_lr=3e-4,
        gradient_clip_val=1.0,
        log_diagnostics=True,
        diagnostics_interval=1000,
    )
    assert dict(cli.model.hparams) == dict(python.hparams)


def test_plain_values_everywhere_in_the_hyperparameters():
    agent = _tiny_agent(value_loss=partial(ValueLoss, target=ShrunkReturn(0.5)), planner=EmotionMCTS(4))

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    assert plain(dict(agent.hparams)), agent.hparams
