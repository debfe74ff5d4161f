"""Train the emotion agent in one file, without Lightning: the shipped setup, a collector, a replay, four phases.

The loop of spec 5 (docs/training.md): a TorchRL collector plays the agent's planner (``agent.make_policy()``) on
batched envs; finished episodes (with their search visit distributions, discounted returns and, for the Monte
Carlo targets that bootstrap at the time limit, the value after each cut) go to a replay; after each collection, a
few updates each run the agent's own four-phase update (:meth:`EmotionAgent.update`: the four loss modules of
:mod:`emotion_rl.losses` in the order of spec 2.3, each a step of its own Adam) on windows of the replay. The agent
is the one ``configs/base.yaml`` describes (assigned action heads, Gumbel root, Monte Carlo values bootstrapped at
the time limit and also trained at imagined tokens, ...), built here from Python objects instead of a config; its
data side stores and samples what the command line's does (tests/test_examples.py compares them).

    python examples/train_minimal.py                         # CartPole-v1, 400 collections (25,600 env steps)
    python examples/train_minimal.py --collections 5 --simulations 4 --seed 1

How long: about 30 ms of CPU time per env step (measured: 30 collections, 1,920 env steps, took 58 s of CPU time
on one core of the development machine, with one torch thread), so the default 25,600 env steps take about 13
minutes on a free core; on a shared machine longer (that run got a third of a core: 2.6 minutes of wall time; the
shipped config's fit measured 42 ms per env step with two runs on two cores, docs/results.md). The cost per env
step stays about the same through training: the search (50 simulations) and the updates read windows of 32 steps.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch
from tensordict import TensorDict
from torchrl.collectors import Collector

from emotion_rl import AssignedActionLoss, DynamicsLoss, EmotionAgent, EmotionMCTS, GumbelRoot, MonteCarlo, ValueLoss
from emotion_rl.agent import PHASES
from emotion_rl.data.envs import EnvInfo, make_env, probe_env
from emotion_rl.data.episodes import EpisodeAssembler
from emotion_rl.data.replay import EpisodeReplay


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--time-limit", type=int, default=None, help="episode limit (default: the env's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collections", type=int, default=400, help="collector batches to play")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--frames-per-batch", type=int, default=64, help="env steps per collection")
    parser.add_argument("--updates-per-collection", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64, help="windows per update")
    parser.add_argument("--context-window", type=int, default=32, help="real steps the agent reads")
    parser.add_argument("--warmup-episodes", type=int, default=16)
    parser.add_argument("--replay-episodes", type=int, default=1000)
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--gamma", type=float, default=0.98)
    return parser.parse_args(argv)


def make_agent(args: argparse.Namespace, info: EnvInfo) -> EmotionAgent:
    """The agent of ``configs/base.yaml`` (its ``model:`` section, diagnostics aside), from Python objects."""
    return EmotionAgent(
        info.obs_dim,
        info.n_actions,
        info.max_episode_steps,
        context_window=args.context_window,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        imagined_action="one_hot",  # the search imagines with the argmax action, as phase 1 learns
        planner=EmotionMCTS(args.simulations, q_transform="minmax_completed", min_spread=0.1, root_rule=GumbelRoot()),
        dynamics_loss=partial(DynamicsLoss, action_input="taken", all_emotions=True),  # decision 8
        action_loss=partial(AssignedActionLoss, update_transformer=False),  # emotion e prefers action e mod A
        value_loss=partial(
            ValueLoss,
            return_scale=0.02,
            target=MonteCarlo(bootstrap_truncation=True),
            imagined_weight=1.0,
            all_emotions=True,
        ),
        gamma=args.gamma,
        head_lr=1e-3,
        transformer_lr=3e-4,
        gradient_clip_val=1.0,
    )


def make_data(args: argparse.Namespace, info: EnvInfo, agent: EmotionAgent) -> tuple[EpisodeAssembler, EpisodeReplay]:
    """The data side of ``configs/base.yaml``: whole episodes with their discounted returns and, where the agent's
    value estimator asks (``MonteCarlo(bootstrap_truncation=True)``), the value after each time-limit cut
    (``agent.bootstrap``, docs/data.md); a replay of them."""
    assembler = EpisodeAssembler(max_len=info.max_episode_steps, gamma=args.gamma, bootstrap=agent.bootstrap)
    replay = EpisodeReplay(args.replay_episodes)
    replay.seed(args.seed)
    return assembler, replay


def sample_batch(args: argparse.Namespace, replay: EpisodeReplay) -> TensorDict:
    """A training batch as ``configs/base.yaml`` samples it: windows of ``context_window`` steps, every stored step
    weighing the same (``window_weighting: uniform``)."""
    return replay.sample_windows(args.batch_size, args.context_window, weighting="uniform")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:  # as the CLI: the search's small operations run faster on one thread
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    # --- env, agent (model, planner, four losses), policy (spec 1, 2, 5 steps 1-3)
    env = make_env(args.env, args.num_envs, seed=args.seed, max_episode_steps=args.time_limit)
    info = probe_env(args.env, args.time_limit)  # obs_dim, n_actions, max_episode_steps (decision 12)
    agent = make_agent(args, info)
    optimizers = agent.configure_optimizers()  # four Adams, two lr groups each (spec 3.2, decision 9)
    policy = agent.make_policy(action_spec=env.action_spec)  # the Gumbel root chooses the emotion (decision 25)

    # --- data: collector -> whole episodes -> replay (spec 3.3, 5 steps 4-7)
    total_frames = args.collections * args.frames_per_batch
    collector = Collector(env, policy, frames_per_batch=args.frames_per_batch, total_frames=total_frames)
    assembler, replay = make_data(args, info, agent)

    model = agent.model
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
        # --- updates from the replay after each collection (spec 5 steps 8-9, decision 16): the agent's own
        for _ in range(args.updates_per_collection):
            logs = agent.update(
                sample_batch(args, replay), optimizers
            )  # phases 1..4 in order, the same code as under Lightning
            history.append({phase: float(logs[f"train/phase{i + 1}_{phase}_loss"]) for i, phase in enumerate(PHASES)})
        if returns:
            mean_return = sum(returns) / len(returns)
            print(
                f"collection {collection:4d}  env steps {env_steps:6d}  return {mean_return:7.1f}  "
                + "  ".join(f"{name} {value:.3f}" for name, value in history[-1].items())
                + f"  ({time.time() - start:.0f}s)"
            )
    collector.shutdown()
    return {"agent": agent, "model": model, "initial_parameters": initial, "losses": history, "env_steps": env_steps}


if __name__ == "__main__":
    main()
