"""The planners without search (emotion_rl.mcts.planners), the action_changed statistic the policy writes and the
self-play stream averages, and benchmarks/search_gain.py end to end on a tiny checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector

from emotion_rl import FixedEmotionPlanner, PriorPlanner
from emotion_rl.cli import main as cli_main
from emotion_rl.data.envs import make_env
from emotion_rl.data.selfplay import CollectionStats, SelfPlayCounters, acting_changes
from emotion_rl.policy import EmotionPolicy

from conftest import CONFIG, TINY
from fakes import FakeModel

E, A = 8, 3
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "search_gain.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("search_gain", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedModel(FakeModel):
    """A model whose root outputs are given: row ``b``'s prior favours emotion ``favourite[b]``; emotion ``e``'s
    action logits favour action ``favoured[b, e]``. Records how often it was evaluated."""

    def __init__(self, favourite: list[int], favoured: torch.Tensor, n_actions: int = A) -> None:
        super().__init__()
        self.favourite, self.favoured, self.n_actions = favourite, favoured, n_actions
        self.calls = 0

    def evaluate(self, history) -> TensorDict:
        self.calls += 1
        n = history.batch_size[0]
        prior = torch.full((n, E), 0.5 / (E - 1))
        prior[torch.arange(n), torch.tensor(self.favourite)] = 0.5
        logits = torch.nn.functional.one_hot(self.favoured, self.n_actions).float() * 4.0 - 2.0
        return TensorDict(
            policy=prior, values=torch.zeros(n, E), action_logits=logits, dynamics=torch.zeros(n, E, 2), batch_size=[n]
        )


def step_input(n: int, is_init: bool = True) -> TensorDict:
    return TensorDict(
        observation=torch.arange(2.0 * n).view(n, 2),
        is_init=torch.full((n, 1), is_init),
        prev_reward=torch.zeros(n, 1),
        batch_size=[n],
    )


# row 0's emotion e favours action e % A, row 1's (e + 1) % A: every emotion acts differently from its neighbours
FAVOURED = torch.stack([torch.arange(E) % A, (torch.arange(E) + 1) % A])


# ---------------------------------------------------------------------------------------------- planners
@pytest.mark.parametrize("emotion", [1, 5])
@pytest.mark.parametrize("greedy", [True, False])
def test_a_fixed_emotion_planner_acts_through_that_emotions_action_head(emotion, greedy):
    model = ScriptedModel(favourite=[3, 6], favoured=FAVOURED)  # the prior favours other emotions
    policy = EmotionPolicy(model, FixedEmotionPlanner(emotion), temperature=1.0, greedy=greedy)
    policy.generator = torch.Generator().manual_seed(0)
    for step in range(4):
        out = policy(step_input(2, is_init=step == 0))
        assert out["emotion"].tolist() == [emotion, emotion]  # at every temperature
        if greedy:
            assert out["action"].tolist() == FAVOURED[:, emotion].tolist()
    assert model.calls == 4  # one model evaluation per step, no simulation
    assert out["visit_counts"].eq(0).all() and out["policy_target"][:, emotion].eq(1).all()


def test_the_prior_planner_acts_through_the_priors_argmax_emotion():
    model = ScriptedModel(favourite=[3, 6], favoured=FAVOURED)
    policy = EmotionPolicy(model, PriorPlanner(), greedy=True)
    out = policy(step_input(2))
    assert out["emotion"].tolist() == [3, 6]
    assert out["action"].tolist() == [FAVOURED[0, 3].item(), FAVOURED[1, 6].item()]
    assert torch.equal(out["policy_target"], out["prior"]) and out["visit_counts"].eq(0).all()
    assert not out["action_changed"].any()  # acting on the prior's emotion changes nothing, by definition


def test_the_planners_return_the_real_models_root_outputs(tiny_model):
    from conftest import random_history

    history = random_history(3, 5)
    expected = tiny_model.evaluate(history)
    for planner in (PriorPlanner(), FixedEmotionPlanner(2)):
        result = planner.search(tiny_model, history)
        assert result.batch_size == (3,)
        torch.testing.assert_close(result["prior"], expected["policy"])
        torch.testing.assert_close(result["action_logits"], expected["action_logits"])
    assert torch.equal(PriorPlanner().search(tiny_model, history)["visit_distribution"], expected["policy"])
    with pytest.raises(ValueError, match="emotion 8 >= the model's 8 emotions"):
        FixedEmotionPlanner(8).search(tiny_model, history)
    with pytest.raises(ValueError, match="integer >= 0"):
        FixedEmotionPlanner(-1)


# ---------------------------------------------------------------------------------------------- action_changed
class ChosenPlanner:
    """Visits all on ``chosen[b]`` (the search's emotion); the root outputs are the scripted model's."""

    def __init__(self, chosen: list[int]) -> None:
        self.chosen = chosen

    def search(self, model, history, generator=None, explore=False) -> TensorDict:
        result = PriorPlanner().search(model, history)
        result["visit_distribution"] = result["policy_target"] = torch.nn.functional.one_hot(
            torch.tensor(self.chosen), E
        ).float()
        return result


def test_action_changed_compares_the_greedy_actions_of_the_chosen_and_the_prior_emotion():
    # prior favourite 3 in both rows; the search picks 6 (row 0: action 0 vs 0, same) and 4 (row 1: 2 vs 1, changed)
    favoured = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1], [1, 2, 0, 1, 2, 0, 1, 2]])
    model = ScriptedModel(favourite=[3, 3], favoured=favoured)
    out = EmotionPolicy(model, ChosenPlanner([6, 4]), greedy=True)(step_input(2))
    assert out["emotion"].tolist() == [6, 4]
    assert out["action_changed"].tolist() == [False, True]
    action_changed, emotion_changed = acting_changes(out)
    assert action_changed.tolist() == [0.0, 1.0] and emotion_changed.tolist() == [1.0, 1.0]


def test_action_changed_reads_greedy_actions_not_the_sampled_one():
    """While training the action is drawn; action_changed still compares the two emotions' argmax actions."""
    favoured = FAVOURED.clone()
    model = ScriptedModel(favourite=[2, 2], favoured=favoured)
    model_logits = model.evaluate

    def flat_logits(history):  # nearly equal logits: the drawn action varies, the argmax does not
        out = model_logits(history)
        out["action_logits"] = out["action_logits"] * 1e-3
        return out

    model.evaluate = flat_logits
    policy = EmotionPolicy(model, ChosenPlanner([2, 2]), temperature=1.0, generator=torch.Generator().manual_seed(0))
    actions = set()
    for step in range(30):
        out = policy(step_input(2, is_init=step == 0))
        actions.update(out["action"].tolist())
        assert not out["action_changed"].any()
    assert len(actions) > 1, "the check needs drawn actions that differ from the argmax"


def test_collection_stats_average_action_and_emotion_changes_over_the_collected_states():
    prior = torch.zeros(2, 3, E)
    prior[..., 1] = 1.0  # the prior's argmax emotion is 1 everywhere
    batch = TensorDict(
        policy_target=prior.clone(),
        prior=prior,
        emotion=torch.tensor([[1, 2, 3], [1, 1, 4]]),
        action_changed=torch.tensor([[False, True, False], [False, False, True]]),
        batch_size=[2, 3],
    )
    stats = CollectionStats()
    stats.add(batch)
    stats.add(batch[:1])  # a second collector batch: means over all nine states
    taken = stats.take([], SelfPlayCounters(), temperature=1.0)
    assert taken["action_changed"].item() == pytest.approx(3 / 9)
    assert taken["emotion_changed"].item() == pytest.approx(5 / 9)
    again = stats.take([], SelfPlayCounters(), temperature=1.0)
    assert again["action_changed"].isnan() and again["emotion_changed"].isnan()
    stats.add(batch.exclude("action_changed"))  # a policy that does not write it: nothing counted
    assert stats.take([], SelfPlayCounters(), temperature=1.0)["action_changed"].isnan()


def test_a_search_that_always_picks_the_priors_emotion_changes_no_action_in_a_collector_batch():
    env = make_env("CartPole-v1", num_envs=2, seed=0)
    model = ScriptedModel(favourite=[5, 5], favoured=torch.stack([torch.arange(E) % 2] * 2), n_actions=2)

    class PriorEmotionPlanner:
        """Visits all on the prior's argmax emotion."""

        def search(self, model, history, generator=None, explore=False) -> TensorDict:
            result = PriorPlanner().search(model, history)
            result["visit_distribution"] = result["policy_target"] = torch.nn.functional.one_hot(
                result["prior"].argmax(-1), E
            ).float()
            return result

    policy = EmotionPolicy(model, PriorEmotionPlanner(), temperature=1.0, action_spec=env.action_spec)
    collector = Collector(env, policy, frames_per_batch=16, total_frames=32)
    try:
        batches = list(collector)
    finally:
        collector.shutdown()
    stats = CollectionStats()
    for batch in batches:
        assert batch["action_changed"].shape == batch.batch_size and batch["action_changed"].dtype == torch.bool
        stats.add(batch)
    taken = stats.take([], SelfPlayCounters(), temperature=1.0)
    assert taken["action_changed"].item() == 0.0 and taken["emotion_changed"].item() == 0.0


# ---------------------------------------------------------------------------------------------- the benchmark
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("runs")
    cli_main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            "--trainer.max_steps=4",
            "--trainer.limit_val_batches=0",
            f"--trainer.logger.init_args.save_dir={logs}",
        ]
    )
    return logs / "cartpole" / "version_0" / "checkpoints" / "last.ckpt"


def test_the_benchmark_plays_every_row_on_the_same_start_states_and_writes_its_json(tiny_checkpoint, tmp_path):
    search_gain = load_benchmark()
    out = tmp_path / "gain.json"
    report = search_gain.main([str(tiny_checkpoint), "--episodes", "2", "--time-limit", "8", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    assert written["env_id"] == "CartPole-v1"  # read from the checkpoint's datamodule section
    assert (written["episodes"], written["seed"], written["time_limit"]) == (2, 0, 8)
    assert written["checkpoint"] == "last.ckpt"  # outside the checkout: no machine path
    assert list(written["rows"]) == [
        "search",
        "search_by_action",
        "values",
        "prior",
        *(f"emotion_{e}" for e in range(8)),
    ]
    for row in written["rows"].values():
        assert len(row["returns"]) == 2 and all(1 <= r <= 8 for r in row["returns"])
        assert row["mean"] == pytest.approx(sum(row["returns"]) / 2) and row["min"] == min(row["returns"])
        assert 0.0 <= row["action_changed"] <= 1.0 and 0.0 <= row["emotion_changed"] <= 1.0
    rows = written["rows"]
    baselines = {name: row["mean"] for name, row in rows.items() if name == "prior" or name.startswith("emotion_")}
    assert written["gain"] == pytest.approx(rows["search"]["mean"] - max(baselines.values()))
    assert written["gain_over_values"] == pytest.approx(rows["search"]["mean"] - rows["values"]["mean"])
    assert written["rows"]["prior"]["action_changed"] == 0.0 and written["rows"]["prior"]["emotion_changed"] == 0.0
    assert set(written["search_vs_prior"]) == {
        "action_changed",
        "emotion_changed",
        "kl_target_prior",
        "argmax_agreement",
    }
    assert math.isfinite(written["search_vs_prior"]["kl_target_prior"])
    heads = written["heads"]  # over the search's states; the check is off by default
    assert heads["states"] == written["rows"]["search"]["states"] and len(heads["usage"]) == 8
    assert sum(heads["usage"]) == pytest.approx(1.0) and 0.0 <= heads["pairwise_agreement"] <= 1.0
    assert written["disagreements"] is None


def test_a_weights_only_checkpoint_needs_the_env_id(tiny_checkpoint, tmp_path):
    search_gain = load_benchmark()
    full = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    stripped = tmp_path / "weights.ckpt"
    torch.save({key: full[key] for key in ("state_dict", "hyper_parameters", "pytorch-lightning_version")}, stripped)
    with pytest.raises(ValueError, match="pass --env-id"):
        search_gain.main([str(stripped), "--episodes", "1", "--time-limit", "3"])
    report = search_gain.main([str(stripped), "--env-id", "CartPole-v1", "--episodes", "1", "--time-limit", "3"])
    assert report["env_id"] == "CartPole-v1" and len(report["rows"]["search"]["returns"]) == 1


def test_the_benchmark_plays_a_changed_search_on_the_rows_it_is_asked_for(tiny_checkpoint):
    search_gain = load_benchmark()
    argv = [str(tiny_checkpoint), "--episodes", "2", "--time-limit", "8", "--rows", "values"]
    report = search_gain.main([*argv, "--planner", "max_depth=1", "num_simulations=2", "c_scale=0.5"])
    assert list(report["rows"]) == ["search", "values"]
    assert report["planner_changes"] == {"max_depth": 1, "num_simulations": 2, "c_scale": 0.5}
    assert all(text in report["planner"] for text in ("num_simulations=2", "max_depth=1", "c_scale=0.5"))
    plain = search_gain.main(argv)
    assert plain["planner_changes"] == {} and "max_depth=1" not in plain["planner"]
    assert plain["rows"]["values"]["returns"] == report["rows"]["values"]["returns"]  # no search in that row
