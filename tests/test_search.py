"""The batched emotion MCTS (``emotion_rl.mcts.search.EmotionMCTS``) against the literal, node-by-node reference.

The reference (``emotion_rl.mcts.reference.literal_search``) transcribes spec 1.3-1.5 with decisions 1-5; every search
here runs on small random models in float64, so that the two implementations must agree on every visit count. A
few tests use hand-made models (constant prior and values) whose search can be worked out on paper, so the UCB
readings (decisions 1-3) are checked independently of the reference.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tensordict import TensorDict

from emotion_rl.mcts.reference import append_imagined_state, literal_search
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel

OBS_DIM = 5
N_ACTIONS = 3
N_EMOTIONS = 8


# ---------------------------------------------------------------------------------------------- helpers
def make_model(seed: int, sharpen: bool | None = None) -> EmotionModel:
    """A small seeded random model in float64 (eval mode). ``sharpen`` scales the policy and value heads so
    that priors are peaked and values spread out (more varied searches); by default every other seed."""
    torch.manual_seed(seed)
    model = EmotionModel(
        OBS_DIM,
        N_ACTIONS,
        n_emotions=N_EMOTIONS,
        d_model=16,
        n_layers=1 + seed % 2,
        n_heads=2,
        context_window=31,
    )
    model = model.double().eval()
    if sharpen if sharpen is not None else seed % 2 == 0:
        with torch.no_grad():
            model.policy_head.weight.mul_(4.0)
            model.value_heads.w2.mul_(4.0)
    return model


def make_history(length: int, seed: int) -> TensorDict:
    """A random real history ``[length]``; the last entry's action and emotion are "none" as at inference."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    action = torch.randint(0, N_ACTIONS, (length,), generator=gen)
    emotion = torch.randint(0, N_EMOTIONS, (length,), generator=gen)
    action[-1] = -1
    emotion[-1] = -1
    reward = torch.randn(length, generator=gen, dtype=torch.float64)
    reward[-1] = 0.0
    return TensorDict(
        observation=torch.randn(length, OBS_DIM, generator=gen, dtype=torch.float64),
        action=action,
        emotion=emotion,
        reward=reward,
        batch_size=[length],
    )


def constant_model(prior: list[float], values: list[float]) -> EmotionModel:
    """A hand-made model whose policy and values are the same at every (real or imagined) state."""
    model = make_model(0, sharpen=False)
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.copy_(torch.tensor(prior, dtype=torch.float64).log())
        model.value_heads.w2.zero_()
        model.value_heads.b2.copy_(torch.tensor(values, dtype=torch.float64).unsqueeze(-1))
    return model


def search(model, history, num_simulations=50, c_puct=1.0, max_depth=3) -> TensorDict:
    return EmotionMCTS(num_simulations=num_simulations, c_puct=c_puct, max_depth=max_depth).search(model, history)


def expanded_depths(result: TensorDict) -> list[int]:
    """Depths of the nodes the planner created (root first), in creation order."""
    depth = result.get(("tree", "node_depth"))
    return depth[depth >= 0].tolist()


# ------------------------------------------------------------------ equality with the literal reference
GRID = list(itertools.product([1, 2, 7], [0.0, 0.5, 1.0, 2.5], [1, 2, 3, 4], [1, 8, 50]))


@pytest.mark.parametrize(("length", "c_puct", "max_depth", "num_simulations"), GRID)
def test_matches_reference_grid(length, c_puct, max_depth, num_simulations):
    """Same visit counts and the same expanded nodes as the literal spec 1.3/1.4, over the settings grid."""
    seed = GRID.index((length, c_puct, max_depth, num_simulations))
    model, history = make_model(seed), make_history(length, seed)
    stats: dict = {}
    expected = literal_search(model, history, num_simulations, c_puct, max_depth, stats=stats)
    result = search(model, history, num_simulations, c_puct, max_depth)
    assert result.get("visit_counts").dtype == torch.long
    assert result.get("visit_counts").tolist() == expected.tolist()
    assert expanded_depths(result) == stats["expanded_depths"]
    assert int(result.get(("tree", "num_nodes"))) == 1 + stats["num_expansions"]


@pytest.mark.parametrize("seed", range(30))
def test_matches_reference_default_settings(seed):
    """Spec defaults (50 simulations, c_puct 1, depth 3) on 30 random models and histories."""
    length = [1, 2, 3, 7, 12][seed % 5]
    model, history = make_model(seed), make_history(length, seed)
    stats: dict = {}
    expected = literal_search(model, history, stats=stats)
    result = search(model, history)
    assert result.get("visit_counts").tolist() == expected.tolist()
    assert expanded_depths(result) == stats["expanded_depths"]


def test_reference_grid_is_not_degenerate():
    """The grid really exercises the tree: deep expansions happen and the counts vary between models."""
    deepest, distinct = 0, set()
    for seed in range(6):
        stats: dict = {}
        counts = literal_search(make_model(seed), make_history(7, seed), 50, 1.0, 4, stats=stats)
        deepest = max(deepest, max(stats["expanded_depths"]))
        distinct.add(tuple(counts.tolist()))
    assert deepest == 3
    assert len(distinct) >= 4


# ------------------------------------------------------------------------------- batching and padding
def test_batched_equals_per_environment_and_reference():
    histories = [make_history(6, seed) for seed in range(5)]
    model = make_model(3)
    batch = torch.stack(histories)
    result = search(model, batch, num_simulations=30, c_puct=1.0, max_depth=3)
    assert result.batch_size == torch.Size([5])
    assert result.get("visit_counts").shape == (5, N_EMOTIONS)
    for b, history in enumerate(histories):
        single = search(model, history, num_simulations=30, c_puct=1.0, max_depth=3)
        assert single.get("visit_counts").shape == (N_EMOTIONS,)
        assert result.get("visit_counts")[b].tolist() == single.get("visit_counts").tolist()
        expected = literal_search(model, history, 30, 1.0, 3)
        assert result.get("visit_counts")[b].tolist() == expected.tolist()
        torch.testing.assert_close(result.get("prior")[b], single.get("prior"))
    # the rows really differ, so equality per row is not an accident of identical inputs
    assert len({tuple(row) for row in result.get("visit_counts").tolist()}) > 1


def test_batched_with_right_padding_mask():
    """Histories of different lengths, right-padded with garbage; ``mask`` is True on the valid prefix."""
    lengths = [1, 7, 3, 5, 2]
    width = max(lengths)
    model = make_model(4)
    histories = [make_history(n, seed) for seed, n in enumerate(lengths)]
    rows = []
    for seed, (history, n) in enumerate(zip(histories, lengths, strict=True)):
        garbage = make_history(width, 100 + seed)  # padding that must be ignored
        row = garbage.clone()
        row[:n] = history
        row.set("mask", torch.arange(width) < n)
        rows.append(row)
    batch = torch.stack(rows)
    result = search(model, batch, num_simulations=40, c_puct=1.5, max_depth=3)
    for b, (history, n) in enumerate(zip(histories, lengths, strict=True)):
        expected = literal_search(model, history, 40, 1.5, 3)
        single = search(model, history, num_simulations=40, c_puct=1.5, max_depth=3)
        assert result.get("visit_counts")[b].tolist() == expected.tolist(), f"row {b} (length {n})"
        assert result.get("visit_counts")[b].tolist() == single.get("visit_counts").tolist()
        # the reference honours the mask too: the padded row gives the same counts as the trimmed history
        assert literal_search(model, batch[b], 40, 1.5, 3).tolist() == expected.tolist()
        torch.testing.assert_close(result.get("action_logits")[b], model.evaluate(history).get("action_logits"))


def test_two_batch_dimensions():
    histories = torch.stack([make_history(4, seed) for seed in range(6)]).reshape(2, 3, 4)
    model = make_model(5)
    result = search(model, histories, num_simulations=12)
    assert result.batch_size == torch.Size([2, 3])
    assert result.get("visit_counts").shape == (2, 3, N_EMOTIONS)
    for i, j in itertools.product(range(2), range(3)):
        expected = literal_search(model, histories[i, j], 12, 1.0, 3)
        assert result.get("visit_counts")[i, j].tolist() == expected.tolist()


# ---------------------------------------------------------------------------------- output contract
@pytest.mark.parametrize("num_simulations", [1, 8, 50])
def test_visit_counts_sum_and_distribution(num_simulations):
    batch = torch.stack([make_history(3, seed) for seed in range(4)])
    result = search(make_model(7), batch, num_simulations=num_simulations)
    counts = result.get("visit_counts")
    assert counts.dtype == torch.long
    assert counts.sum(-1).tolist() == [num_simulations] * 4
    assert (counts >= 0).all()
    torch.testing.assert_close(
        result.get("visit_distribution"), counts.to(torch.float64) / num_simulations, rtol=0, atol=1e-15
    )
    assert result.get(("tree", "node_depth")).shape == (4, num_simulations + 1)


def test_root_outputs_are_the_models():
    """prior, values, action_logits and dynamics are model.evaluate(history) at the root (spec 1.3 step 2)."""
    model = make_model(8)
    batch = torch.stack([make_history(5, seed) for seed in range(3)])
    result = search(model, batch, num_simulations=8)
    outputs = model.evaluate(batch)
    torch.testing.assert_close(result.get("action_logits"), outputs.get("action_logits"))
    torch.testing.assert_close(result.get("prior"), outputs.get("policy"))
    torch.testing.assert_close(result.get("values"), outputs.get("values"))
    torch.testing.assert_close(result.get("dynamics"), outputs.get("dynamics"))
    assert result.get("action_logits").shape == (3, N_EMOTIONS, N_ACTIONS)


def test_search_does_not_modify_history():
    """Spec 1.6: imagined states never enter the real sequence."""
    lengths = [4, 2, 6]
    rows = [make_history(6, seed) for seed in range(3)]
    for row, n in zip(rows, lengths, strict=True):
        row.set("mask", torch.arange(6) < n)
    batch = torch.stack(rows)
    before = batch.clone()
    model = make_model(9)
    search(model, batch, num_simulations=50, max_depth=4)
    literal_search(model, batch[0], 50, 1.0, 4)
    assert set(batch.keys()) == set(before.keys())
    assert batch.batch_size == before.batch_size
    for key in before.keys():
        torch.testing.assert_close(batch.get(key), before.get(key), rtol=0, atol=0)


@pytest.mark.parametrize("max_depth", [1, 2, 3, 4])
def test_no_expansion_at_max_depth(max_depth):
    """Spec 1.4: nothing at MAX_DEPTH is expanded, so expanded nodes have depth <= max_depth - 1 (root 0)."""
    deepest = 0
    for seed in range(4):
        model, history = make_model(seed), make_history(3, seed)
        stats: dict = {}
        literal_search(model, history, 50, 1.0, max_depth, stats=stats)
        result = search(model, history, num_simulations=50, max_depth=max_depth)
        depth = result.get(("tree", "node_depth"))
        assert depth[0] == 0  # the root
        assert int(depth.max()) <= max_depth - 1
        assert int(depth.min()) >= -1
        assert max(stats["expanded_depths"]) <= max_depth - 1
        assert stats["max_depth_reached"] <= max_depth
        deepest = max(deepest, int(depth.max()))
    assert deepest == max_depth - 1  # the bound is reached, so the check above is not vacuous


# ------------------------------------------------------------------ UCB readings (hand-made models)
PEAKED = [0.05, 0.05, 0.05, 0.05, 0.05, 0.5, 0.2, 0.05]


def test_first_simulation_follows_prior_argmax():
    """Decision 1: with sqrt(max(N(n), 1)) the first simulation picks argmax P (here 5), not index 0.

    The literal sqrt(N(root)) = 0 would tie every emotion and pick 0.
    """
    model = constant_model(PEAKED, [0.0] * 8)
    history = make_history(3, 0)
    for c_puct in [0.5, 1.0, 2.5]:
        counts = search(model, history, num_simulations=1, c_puct=c_puct).get("visit_counts")
        assert counts.tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
        assert literal_search(model, history, 1, c_puct, 3).tolist() == counts.tolist()


@pytest.mark.parametrize("seed", range(12))
def test_first_simulation_follows_prior_on_random_models(seed):
    model, history = make_model(seed, sharpen=True), make_history(4, seed)
    result = search(model, history, num_simulations=1)
    expected = torch.zeros(N_EMOTIONS, dtype=torch.long)
    expected[int(model.evaluate(history).get("policy").argmax())] = 1
    assert result.get("visit_counts").tolist() == expected.tolist()


def test_random_priors_do_not_always_peak_at_zero():
    """Keeps the test above meaningful: some seeds have their prior argmax away from index 0."""
    argmaxes = {
        int(make_model(seed, sharpen=True).evaluate(make_history(4, seed)).get("policy").argmax()) for seed in range(12)
    }
    assert argmaxes - {0}


def test_parent_count_is_sum_of_children():
    """Worked by hand, depth 1, values 0, c_puct 1 (UCB = P(e) sqrt(max(sum N, 1)) / (1 + N(e))).

    sim 1: U5 = 0.5 (max) -> 5. sim 2: U5 = 0.5 * 1 / 2 = 0.25 > U6 = 0.2 -> 5.
    sim 3: U5 = 0.5 * sqrt(2) / 3 = 0.236 < U6 = 0.2 * sqrt(2) = 0.283 -> 6.
    """
    model = constant_model(PEAKED, [0.0] * 8)
    history = make_history(2, 1)
    for num_simulations, expected in [(2, [0, 0, 0, 0, 0, 2, 0, 0]), (3, [0, 0, 0, 0, 0, 2, 1, 0])]:
        assert search(model, history, num_simulations, 1.0, 1).get("visit_counts").tolist() == expected
        assert literal_search(model, history, num_simulations, 1.0, 1).tolist() == expected


def test_ties_go_to_lowest_index():
    """Decision 3: with c_puct 0 and every value 0, every UCB score is 0 and every simulation picks 0."""
    model = constant_model(PEAKED, [0.0] * 8)
    history = make_history(3, 2)
    for max_depth in [1, 3]:
        assert search(model, history, 10, 0.0, max_depth).get("visit_counts").tolist() == [10, 0, 0, 0, 0, 0, 0, 0]
        assert literal_search(model, history, 10, 0.0, max_depth).tolist() == [10, 0, 0, 0, 0, 0, 0, 0]


def test_unvisited_q_is_zero():
    """Decision 2: Q = 0 while unvisited. With c_puct 0 and every value -1, a visited emotion scores -1 and
    every unvisited one 0, so the first 8 simulations visit each emotion once, in index order; with every
    value +1 the first visited emotion (0, by the tie rule) keeps winning."""
    history = make_history(3, 3)
    negative = constant_model(PEAKED, [-1.0] * 8)
    for n in [3, 8]:
        expected = [1] * n + [0] * (8 - n)
        assert search(negative, history, n, 0.0, 1).get("visit_counts").tolist() == expected
        assert literal_search(negative, history, n, 0.0, 1).tolist() == expected
    positive = constant_model(PEAKED, [1.0] * 8)
    assert search(positive, history, 8, 0.0, 1).get("visit_counts").tolist() == [8, 0, 0, 0, 0, 0, 0, 0]


def bandit_counts(prior: list[float], values: list[float], num_simulations: int, c_puct: float) -> list[int]:
    """Depth 1 by hand: the root's children are never expanded, each is worth its stored value (spec 1.4),
    so the search is a bandit with Q(e) = V(e) once visited (decisions 1-3), in plain Python floats."""
    counts = [0] * len(prior)
    for _ in range(num_simulations):
        sqrt_n = math.sqrt(max(sum(counts), 1))
        scores = [
            (values[e] if counts[e] else 0.0) + c_puct * prior[e] * sqrt_n / (1 + counts[e]) for e in range(len(prior))
        ]
        counts[scores.index(max(scores))] += 1
    return counts


@pytest.mark.parametrize(("seed", "c_puct"), list(itertools.product(range(5), [0.0, 0.5, 1.0, 2.5])))
def test_depth_one_is_a_bandit_on_root_values(seed, c_puct):
    model, history = make_model(seed), make_history(5, seed)
    outputs = model.evaluate(history)
    expected = bandit_counts(outputs.get("policy").tolist(), outputs.get("values").tolist(), 50, c_puct)
    assert search(model, history, 50, c_puct, 1).get("visit_counts").tolist() == expected
    assert literal_search(model, history, 50, c_puct, 1).tolist() == expected


# ------------------------------------------------------------ history causality ("-1 means none")
def test_last_entry_action_emotion_reward_are_not_read():
    """The last entry's a_t, e_t, r_t are not known at search time: they must not change anything."""
    model, history = make_model(11), make_history(5, 11)
    other = history.clone()
    other.get("action")[-1] = 2
    other.get("emotion")[-1] = 6
    other.get("reward")[-1] = 3.5
    torch.testing.assert_close(model.evaluate(other).get("values"), model.evaluate(history).get("values"))
    assert search(model, other).get("visit_counts").tolist() == search(model, history).get("visit_counts").tolist()


def test_none_differs_from_action_and_emotion_zero():
    """-1 is a reserved "none", not an alias of action 0 / emotion 0 (decision 13)."""
    model, history = make_model(12), make_history(4, 12)
    history.get("action")[-2] = -1
    history.get("emotion")[-2] = -1
    base = model.evaluate(history).get("values")
    for key in ["action", "emotion"]:
        zero = history.clone()
        zero.get(key)[-2] = 0
        assert not torch.allclose(model.evaluate(zero).get("values"), base), key


def test_entries_are_causal():
    """The outputs at step t depend on entries 0..t only: later entries (or padding) change nothing."""
    model, history = make_model(13), make_history(7, 13)
    prefix = history[:4]
    longer = history.clone()
    longer.set("mask", torch.arange(7) < 4)
    torch.testing.assert_close(model.evaluate(longer).get("policy"), model.evaluate(prefix).get("policy"))
    changed = history.clone()
    changed.get("observation")[4:] += 1.0
    changed.get("action")[3:] = 0
    changed.set("mask", torch.arange(7) < 4)
    torch.testing.assert_close(model.evaluate(changed).get("policy"), model.evaluate(prefix).get("policy"))
    assert not torch.allclose(model.evaluate(history).get("policy"), model.evaluate(prefix).get("policy"))


def test_imagined_state_is_appended_with_none_dummies():
    """Spec 1.5 + decisions 5 and 13: evaluating at an imagined state equals running the model on the real sequence
    with the imagined state appended after dummy a, e, r = none, none, 0.0 (not 0, 0, 0.0)."""
    model, history = make_model(14), make_history(5, 14)
    history.get("action")[-1] = 1  # whatever the last entry holds, the dummy replaces it
    history.get("emotion")[-1] = 4
    imagined = torch.randn(OBS_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    via_model = model.evaluate(history.unsqueeze(0), imagined_observation=imagined.unsqueeze(0))[0]
    appended = append_imagined_state(history, imagined)
    assert appended.batch_size == torch.Size([6])
    assert appended.get("action")[-2] == -1 and appended.get("emotion")[-2] == -1
    literal = model.evaluate(appended)
    for key in ["policy", "values", "action_logits", "dynamics"]:
        torch.testing.assert_close(via_model.get(key), literal.get(key))
    zero_dummy = appended.clone()
    zero_dummy.get("action")[-2] = 0
    zero_dummy.get("emotion")[-2] = 0
    assert not torch.allclose(model.evaluate(zero_dummy).get("values"), via_model.get("values"))
    # the real sequence is untouched (spec 1.6)
    assert history.batch_size == torch.Size([5]) and history.get("action")[-1] == 1
