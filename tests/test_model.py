"""EmotionModel: the sequence layout without leakage, imagined states, padding, context (spec 2.1, 1.5)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from emotion_rl import EmotionModel
from emotion_rl.mcts.search_model import FusedSearchModel, PlainSearchModel, encoding_cache

from conftest import N_ACTIONS, N_EMOTIONS, OBS_DIM, random_history


def test_output_shapes_and_policy_is_a_distribution(tiny_model):
    out = tiny_model.evaluate(random_history(3, 5))
    assert out.batch_size == torch.Size([3])
    assert out["policy"].shape == (3, N_EMOTIONS)
    assert out["values"].shape == (3, N_EMOTIONS)
    assert out["action_logits"].shape == (3, N_EMOTIONS, N_ACTIONS)
    assert out["dynamics"].shape == (3, N_EMOTIONS, OBS_DIM)
    torch.testing.assert_close(out["policy"].sum(-1), torch.ones(3, dtype=torch.float64))
    assert out["values"].dtype == torch.float64  # works in float64 after .double()


def test_extra_batch_dims(tiny_model):
    history = random_history(6, 4).reshape(2, 3, 4)
    out = tiny_model.evaluate(history)
    assert out.batch_size == torch.Size([2, 3])
    flat = tiny_model.evaluate(history.reshape(6, 4))
    torch.testing.assert_close(out["values"].reshape(6, -1), flat["values"])


def test_last_entry_action_emotion_reward_do_not_matter(tiny_model):
    """The last entry's a, e, r are not known at inference time and must not influence the result."""
    history = random_history(2, 6)
    changed = history.clone()
    changed["action"][:, -1] = (changed["action"][:, -1] + 1) % N_ACTIONS
    changed["emotion"][:, -1] = -1
    changed["reward"][:, -1] = 123.0
    a, b = tiny_model.evaluate(history), tiny_model.evaluate(changed)
    for key in a.keys():
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_no_leakage_h_t_ignores_a_t_and_the_future(tiny_model):
    """Token i is (a_{i-1}, e_{i-1}, r_{i-1}, s_i): h_t never sees a_t, e_t, r_t or anything later."""
    history = random_history(1, 8)
    encoding = tiny_model.encode(history)
    t = 3
    changed = history.clone()
    changed["action"][:, t] = (changed["action"][:, t] + 1) % N_ACTIONS
    changed["emotion"][:, t] = (changed["emotion"][:, t] + 1) % N_EMOTIONS
    changed["reward"][:, t] += 5.0
    changed["observation"][:, t + 1 :] += 1.0
    changed_encoding = tiny_model.encode(changed)
    torch.testing.assert_close(encoding.hidden[:, : t + 1], changed_encoding.hidden[:, : t + 1], rtol=0, atol=0)
    # ...and h_{t+1} does see a_t (otherwise the history would carry no actions at all)
    assert not torch.allclose(encoding.hidden[:, t + 1], changed_encoding.hidden[:, t + 1])


def test_previous_action_emotion_reward_are_read(tiny_model):
    """Each of a_{t-1}, e_{t-1}, r_{t-1} changes h_t."""
    history = random_history(1, 5)
    base = tiny_model.evaluate(history)["values"]
    for key, change in (("action", 1), ("emotion", 1), ("reward", 0.5)):
        changed = history.clone()
        if key == "reward":
            changed[key][:, -2] += change
        else:
            changed[key][:, -2] = (changed[key][:, -2] + change) % (N_ACTIONS if key == "action" else N_EMOTIONS)
        assert not torch.allclose(tiny_model.evaluate(changed)["values"], base), key


def test_none_is_its_own_token(tiny_model):
    """-1 ("none") is not action 0: the model can tell the first step's missing predecessor from a real action."""
    history = random_history(1, 3)
    history["action"][:, 1] = -1
    as_none = tiny_model.evaluate(history)["values"]
    history["action"][:, 1] = 0
    assert not torch.allclose(tiny_model.evaluate(history)["values"], as_none)


def test_whole_episode_pass_equals_prefix_evaluations(tiny_model):
    """One causal pass gives, at every t, what inference computes on the prefix [:t+1] (decision 13)."""
    history = random_history(2, 7)
    hidden = tiny_model.encode(history).hidden
    for t in range(7):
        prefix_out = tiny_model.evaluate(history[:, : t + 1])
        whole_out = tiny_model.heads(hidden[:, t])
        for key in prefix_out.keys():
            torch.testing.assert_close(prefix_out[key], whole_out[key])


def test_imagined_state_equals_appending_a_dummy_step(tiny_model):
    """spec 1.5: outputs at an imagined state = outputs of history + [dummy a, e, r (none, none, 0), s_imagined]."""
    history = random_history(3, 5)
    imagined = torch.randn(3, OBS_DIM, dtype=torch.float64)
    cached = tiny_model.evaluate(history, imagined_observation=imagined)
    appended = history.clone()
    appended["action"][:, -1] = -1
    appended["emotion"][:, -1] = -1
    appended["reward"][:, -1] = 0.0
    step = TensorDict(
        observation=imagined.unsqueeze(1),
        action=torch.full((3, 1), -1),
        emotion=torch.full((3, 1), -1),
        reward=torch.zeros(3, 1, dtype=torch.float64),
        batch_size=[3, 1],
    )
    literal = tiny_model.evaluate(torch.cat([appended, step], dim=1))
    for key in cached.keys():
        torch.testing.assert_close(cached[key], literal[key])


def test_mask_reads_each_row_at_its_last_valid_entry(tiny_model):
    history = random_history(3, 6)
    lengths = torch.tensor([2, 6, 4])
    history["mask"] = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    history["observation"][~history["mask"]] = 1e3  # garbage in the padding must not matter
    imagined = torch.randn(3, OBS_DIM, dtype=torch.float64)
    out = tiny_model.evaluate(history)
    out_imagined = tiny_model.evaluate(history, imagined_observation=imagined)
    for row, length in enumerate(lengths.tolist()):
        alone = history[row : row + 1, :length].exclude("mask")
        torch.testing.assert_close(out["values"][row], tiny_model.evaluate(alone)["values"][0])
        torch.testing.assert_close(
            out_imagined["dynamics"][row], tiny_model.evaluate(alone, imagined[row : row + 1])["dynamics"][0]
        )


def test_history_too_long_for_context_is_refused_with_both_lengths():
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=8, n_layers=1, n_heads=1, context_window=4)
    model.evaluate(random_history(1, 4).float())  # 4 real steps + 1 imagined state fit
    with pytest.raises(ValueError, match=r"history of 5 steps.*context_window=4"):
        model.evaluate(random_history(1, 5).float())


def test_dynamics_takes_the_action_and_passes_gradient_to_it(tiny_model):
    """spec 2.5: Z(s, a) = f(concat(h(s), a)); gradients flow to a."""
    h = torch.randn(2, 16, dtype=torch.float64)
    action = torch.softmax(torch.randn(2, N_EMOTIONS, N_ACTIONS, dtype=torch.float64), -1).requires_grad_(True)
    z = tiny_model.dynamics(h, action)
    assert z.shape == (2, N_EMOTIONS, OBS_DIM)
    z.sum().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0
    other = torch.softmax(torch.randn(2, N_EMOTIONS, N_ACTIONS, dtype=torch.float64), -1)
    assert not torch.allclose(tiny_model.dynamics(h, other), z)


def test_invalid_sizes_are_refused():
    with pytest.raises(ValueError, match="n_actions"):
        EmotionModel(4, 0)
    with pytest.raises(ValueError, match="divisible"):
        EmotionModel(4, 2, d_model=10, n_heads=4)


# ------------------------------------------------------------ the planner's fused path (spec 1.4, 1.5)
def padded_history():
    """Five right-padded histories of lengths 1..7 (garbage past the mask) for the expansion-path tests."""
    history = random_history(5, 7, seed=3)
    history["mask"] = torch.arange(7) < torch.tensor([1, 7, 3, 5, 2]).unsqueeze(1)
    return history


# float64 throughout: the fused path sums in another order (fused head matrices, one product over [real ; own]
# keys), so it agrees with the general path to a few ulps; 1e-12 is ~1e4 ulps of slack at these magnitudes, and
# any wrong weight, mask, position or slot gives differences of order 1e-2 or more.
TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_fused_expand_equals_evaluate_imagined(n_layers):
    """The fused per-simulation path == the general "cached history + one imagined token" path, with padding, for
    every row; head_hidden != d_model checks the fused head layout."""
    torch.manual_seed(n_layers)
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=n_layers, n_heads=2, head_hidden=24).double()
    history = padded_history()
    encoding = model.encode(history)
    cache = encoding_cache(model, encoding)
    imagined = torch.randn(5, OBS_DIM, dtype=torch.float64)
    expected = model.evaluate_imagined(encoding, imagined, torch.arange(5))
    with torch.no_grad():
        fast = FusedSearchModel(model).expand(cache, imagined)
    for key in ("policy", "values", "action_logits", "dynamics"):
        torch.testing.assert_close(getattr(fast, key), expected[key], **TIGHT)


def test_search_prefix_equals_encode_then_expansion_cache(tiny_model):
    """``search_prefix`` (last block at the last valid step only, keys/values written into the cache) gives the
    same h_t as ``encode`` and a cache that evaluates expansions as the cache of ``encode(...)`` does."""
    history = padded_history()
    encoding = tiny_model.encode(history)
    fused = FusedSearchModel(tiny_model)
    with torch.no_grad():
        hidden, cache = fused.search_prefix(history)
        reference = encoding_cache(tiny_model, encoding)
        imagined = torch.randn(5, OBS_DIM, dtype=torch.float64)
        fast, slow = fused.expand(cache, imagined), fused.expand(reference, imagined)
    torch.testing.assert_close(hidden, encoding.last_hidden, **TIGHT)
    t = history.batch_size[-1]
    torch.testing.assert_close(cache.kv[..., :t, :], reference.kv[..., :t, :], **TIGHT)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


def test_fused_children_equal_one_imagined_state_at_a_time(tiny_model):
    """Several imagined states per row (the root's children) are each evaluated on their own (decision 5)."""
    history = padded_history()
    encoding = tiny_model.encode(history)
    states = torch.randn(5, 3, OBS_DIM, dtype=torch.float64)
    with torch.no_grad():
        children = FusedSearchModel(tiny_model).children(encoding_cache(tiny_model, encoding), states)
    for q in range(3):
        expected = tiny_model.evaluate(history, imagined_observation=states[:, q])
        for key in ("policy", "values", "action_logits", "dynamics"):
            torch.testing.assert_close(getattr(children, key)[:, q], expected[key], **TIGHT)


def test_plain_and_fused_search_models_agree(tiny_model):
    """The two implementations of the planner's protocol: same root, expansions and children up to rounding."""
    history = padded_history()
    imagined = torch.randn(5, OBS_DIM, dtype=torch.float64)
    states = torch.randn(5, 2, OBS_DIM, dtype=torch.float64)
    with torch.no_grad():
        outputs = []
        for adapter in (FusedSearchModel(tiny_model), PlainSearchModel(tiny_model)):
            root, state = adapter.root(history)
            outputs.append((root, adapter.expand(state, imagined), adapter.children(state, states)))
    for fused, plain in zip(*outputs, strict=True):
        for a, b in zip(fused, plain, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)
    assert not torch.allclose(outputs[0][1].values, outputs[0][2].values[:, 0])  # the states matter


def test_selected_heads_equal_the_selected_emotion_of_all_heads():
    torch.manual_seed(0)
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=1, n_heads=2, context_window=7).double()
    hidden = torch.randn(3, 5, 16, dtype=torch.float64)
    emotion = torch.randint(0, N_EMOTIONS, (3, 5))
    emotion[0, :2] = 2  # some emotions repeat, some are absent
    emotion[2, 4] = -1  # padding reads emotion 0
    picked = emotion.clamp(min=0)
    rows = (torch.arange(3).view(3, 1), torch.arange(5).view(1, 5), picked)
    torch.testing.assert_close(model.emotion_values(hidden, emotion), model.emotion_values(hidden)[rows])
    torch.testing.assert_close(model.action_logits(hidden, emotion), model.action_logits(hidden)[rows])
    action = torch.softmax(torch.randn(3, 5, N_EMOTIONS, N_ACTIONS, dtype=torch.float64), -1)
    torch.testing.assert_close(
        model.dynamics(hidden, action[rows], emotion), model.dynamics(hidden, action)[rows], msg="dynamics"
    )


def test_every_head_reads_an_empty_batch_of_states():
    """A window of one step has no "next" token: the heads must map ``[B, 0, d]`` to ``[B, 0, E, ...]``."""
    model = EmotionModel(OBS_DIM, N_ACTIONS, d_model=16, n_layers=1, n_heads=2, context_window=4).double()
    hidden = torch.zeros(3, 0, 16, dtype=torch.float64)
    assert model.emotion_values(hidden).shape == (3, 0, N_EMOTIONS)
    assert model.action_logits(hidden).shape == (3, 0, N_EMOTIONS, N_ACTIONS)
