"""Train the emotion agent in one file, without Lightning: collect with the planner, replay, four losses, four Adams.

The loop of spec 5 (docs/training.md): a TorchRL collector plays the planner (:class:`emotion_rl.EmotionPolicy`) on
batched envs; finished episodes (with their search visit distributions and discounted returns) go to a replay of
whole episodes; after each collection, a few updates each run the four phases of spec 2.3 in order, every phase a
loss module of :mod:`emotion_rl.losses` and a step of its own optimizer (decision 9).

    python examples/train_minimal.py                         # CartPole-v1, ~25k env steps, a few minutes on CPU
    python examples/train_minimal.py --collections 5 --simulations 4 --seed 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torchrl.collectors import Collector

from emotion_rl.data.envs import make_env, probe_env
from emotion_rl.data.episodes import EpisodeAssembler
from emotion_rl.data.replay import EpisodeReplay
from emotion_rl.losses import DynamicsLoss, MaxValueActionLoss, PolicyLoss, ValueLoss
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--time-limit", type=int, default=None, help="episode limit (default: the env's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collections", type=int, default=400, help="collector batches to play")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--frames-per-batch", type=int, default=64, help="env steps per collection")
    parser.add_argument("--updates-per-collection", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="episodes per update")
    parser.add_argument("--warmup-episodes", type=int, default=16)
    parser.add_argument("--replay-episodes", type=int, default=1000)
    parser.add_argument("--simulations", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--transformer-lr", type=float, default=3e-4)
    parser.add_argument("--gamma", type=float, default=0.98)
    parser.add_argument("--return-scale", type=float, default=0.02, help="value targets are return_scale * G")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)

    # --- env, model, planner, policy (spec 1, 5 steps 1-3)
    env = make_env(args.env, args.num_envs, seed=args.seed, max_episode_steps=args.time_limit)
    info = probe_env(args.env, args.time_limit)  # obs_dim, n_actions, max_episode_steps (decision 12)
    model = EmotionModel(
        info.obs_dim,
        info.n_actions,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        context_window=info.max_episode_steps,  # a whole episode (the model adds the imagined slot)
    )
    planner = EmotionMCTS(num_simulations=args.simulations)
    total_frames = args.collections * args.frames_per_batch
    temperature = TemperatureSchedule(1.0, 0.1, total_frames)  # emotions sampled while training (decision 18)
    policy = EmotionPolicy(model, planner, temperature=temperature, action_spec=env.action_spec)

    # --- the four phases (spec 2.2, 2.3): a loss module and an Adam each, two lr groups (spec 3.2, decision 9)
    losses = [
        DynamicsLoss(model, action_input="taken"),  # decision 8
        MaxValueActionLoss(model),  # section 4.3, decision 7
        ValueLoss(model, return_scale=args.return_scale),
        PolicyLoss(model),
    ]
    heads, transformer = model.head_parameters(), model.transformer_parameters()
    optimizers = [
        torch.optim.Adam(
            [{"params": heads[loss.name], "lr": args.head_lr}, {"params": transformer, "lr": args.transformer_lr}]
        )
        for loss in losses
    ]

    # --- data: collector -> whole episodes -> replay (spec 3.3, 5 steps 4-7)
    collector = Collector(env, policy, frames_per_batch=args.frames_per_batch, total_frames=total_frames)
    assembler = EpisodeAssembler(max_len=info.max_episode_steps, gamma=args.gamma)
    replay = EpisodeReplay(args.replay_episodes)
    replay.seed(args.seed)

    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    history: list[dict[str, float]] = []
    env_steps, start = 0, time.time()
    for collection, batch in enumerate(collector):
        env_steps += batch.numel()
        episodes = assembler.ingest(batch)
        if episodes is not None:
            replay.extend(episodes)
        returns, _ = assembler.drain_finished()
        if len(replay) < args.warmup_episodes:
            continue
        # --- updates from the replay after each collection (spec 5 steps 8-9, decision 16)
        for _ in range(args.updates_per_collection):
            data = replay.sample(args.batch_size)
            logs = {}
            for loss_module, optimizer in zip(losses, optimizers, strict=True):  # phases 1..4, in order
                loss = loss_module(data)[f"loss_{loss_module.name}"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                logs[loss_module.name] = loss.item()
            history.append(logs)
        if returns:
            mean_return = sum(returns) / len(returns)
            print(
                f"collection {collection:4d}  env steps {env_steps:6d}  return {mean_return:7.1f}  "
                + "  ".join(f"{name} {value:.3f}" for name, value in history[-1].items())
                + f"  ({time.time() - start:.0f}s)"
            )
    collector.shutdown()
    return {"model": model, "initial_parameters": initial, "losses": history, "env_steps": env_steps}


if __name__ == "__main__":
    main()
