"""The emotion planner inside a plain TorchRL loop, no Lightning: collector, replay buffer, and another agent.

Another TorchRL agent picks up :class:`emotion_rl.EmotionPolicy` like any policy module: a ``Collector`` runs it on a
batched environment, the collected transitions (with the planner's extra keys ``emotion``, ``policy_target``
and ``visit_counts``) go into a ``TensorDictReplayBuffer``, and the agent learns from them. Here the "other agent"
is a small MLP that distils the search: it learns to predict the planner's policy target over emotions from
the observation alone (a cheap amortised planner; the cross-entropy loss of spec 2.2.1, on a network of its own).

    python examples/torchrl_loop.py                       # CartPole-v1, 8 envs, 50 simulations, 2,048 frames
    python examples/torchrl_loop.py --frames 256 --simulations 8
    python examples/torchrl_loop.py --workers 2           # collect in 2 worker processes (MultiCollector)

The environment needs two transforms the policy reads: torchrl's ``InitTracker`` (``is_init``: start a new history)
and :class:`emotion_rl.data.envs.PreviousReward` (``prev_reward``: the reward of the previous step, which completes the
previous history entry). :func:`emotion_rl.make_env` adds both; with your own env, wrap it as shown in ``build_env``.

The collector is closed with :func:`emotion_rl.closing_collector`: TorchRL 0.14's ``MultiCollector`` leaves
its weight-sync scheme to a finaliser that, at interpreter exit, starts a thread that never ends, so a script that
does not close the scheme itself hangs when it finishes.
"""

from __future__ import annotations

import argparse
import functools

import gymnasium
import torch
from torch import nn
from torchrl.collectors import Collector, MultiCollector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import Compose, EnvBase, GymEnv, InitTracker, SerialEnv, TransformedEnv

from emotion_rl import EmotionMCTS, EmotionModel, EmotionPolicy, TemperatureSchedule
from emotion_rl.data.envs import PreviousReward
from emotion_rl.data.selfplay import closing_collector


def build_env(env_id: str, num_envs: int, seed: int) -> EnvBase:
    """Any batched TorchRL env works; the policy needs ``is_init`` and ``prev_reward`` from these two transforms."""
    make_one = functools.partial(GymEnv, env_id)  # picklable: worker processes build their own envs
    env = TransformedEnv(SerialEnv(num_envs, make_one), Compose(InitTracker(), PreviousReward()))
    env.set_seed(seed)
    return env


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--frames", type=int, default=2048, help="environment steps to collect in all")
    parser.add_argument("--frames-per-batch", type=int, default=256)
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="0: collect here; N: in N worker processes")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    env = build_env(args.env, args.num_envs, args.seed)
    obs_dim = env.observation_spec["observation"].shape[-1]
    n_actions = env.action_spec.shape[-1]
    max_steps = gymnasium.spec(args.env).max_episode_steps  # the longest history the model must hold
    model = EmotionModel(obs_dim, n_actions, context_window=max_steps)  # an untrained (or your trained) model
    planner = EmotionMCTS(num_simulations=args.simulations)
    policy = EmotionPolicy(
        model, planner, temperature=TemperatureSchedule(1.0, 0.1, args.frames), action_spec=env.action_spec
    )

    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(100_000), batch_size=args.batch_size)

    # The other agent: observation -> distribution over the 8 emotions, trained on the planner's policy targets.
    student = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, model.n_emotions))
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses, frames = [], 0
    with closing_collector(make_collector(args, env, policy)) as collector:  # shut down, weight-sync schemes too
        for batch in collector:
            frames += batch.numel()
            buffer.extend(batch.reshape(-1).select("observation", "emotion", "policy_target", ("next", "reward")))
            for _ in range(4):
                sample = buffer.sample()
                log_prob = torch.log_softmax(student(sample["observation"]), dim=-1)
                loss = -(sample["policy_target"] * log_prob).sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            print(f"frames {frames:6d}  buffer {len(buffer):6d}  distillation loss {losses[-1]:.3f}")
    return {"frames": float(frames), "buffer": float(len(buffer)), "first_loss": losses[0], "last_loss": losses[-1]}


def make_collector(args: argparse.Namespace, env: EnvBase, policy: EmotionPolicy) -> Collector | MultiCollector:
    """A collector in this process, or a synchronous ``MultiCollector`` over ``args.workers`` processes."""
    if not args.workers:
        return Collector(env, policy, frames_per_batch=args.frames_per_batch, total_frames=args.frames)
    per_worker = max(args.num_envs // args.workers, 1)
    make_worker_env = functools.partial(build_env, args.env, per_worker, args.seed)
    env.close()
    return MultiCollector(
        [make_worker_env] * args.workers,
        policy,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.frames,
        sync=True,
    )


if __name__ == "__main__":
    main()
