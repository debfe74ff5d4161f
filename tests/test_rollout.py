"""Playing policies: play (TorchRL rollout) and the greedy evaluation on it."""

from __future__ import annotations

import torch

from emotion_rl.data.envs import make_env
from emotion_rl.data.rollout import evaluate_policy, play

from fakes import COUNTER_ID, A, fake_policy


def test_evaluate_policy_counts_only_the_first_episode_of_each_env():
    env = make_env(COUNTER_ID, num_envs=3, seed=5)
    result = evaluate_policy(env, fake_policy(True), max_steps=50)
    lengths = result["episode_length"]
    # greedy: emotion (history length) % E -> action = emotion % 2 = (t + 1) % 2; reward t + 1 + 100 * action
    expected = torch.tensor([sum(t + 1 + 100 * ((t + 1) % 2) for t in range(n)) for n in lengths.tolist()])
    assert torch.equal(result["episode_return"], expected.float())


def test_play_is_a_torchrl_rollout_that_stops_at_the_first_end_or_plays_on():
    seen = []
    steps = play(
        make_env(COUNTER_ID, num_envs=3, seed=5), fake_policy(True), 50, callback=lambda env, td: seen.append(1)
    )
    assert steps.batch_size[0] == 3 and steps["next", "done"][:, -1].any() and not steps["next", "done"][:, :-1].any()
    assert len(seen) == steps.batch_size[1] - 1  # after every step but the last
    assert {"observation", "action", "emotion", "policy_target", "is_init"} <= set(steps.keys())
    assert steps["action"].shape[-1] == A  # one-hot, in the env's encoding (play sets the policy's action_spec)
    longer = play(make_env(COUNTER_ID, num_envs=3, seed=5), fake_policy(True), 20, break_when_any_done=False)
    assert longer.batch_size == (3, 20) and longer["is_init"][:, 1:].any()  # finished envs were reset and played on
