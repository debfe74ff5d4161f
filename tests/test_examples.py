"""The examples run: examples/train_minimal.py trains the shipped agent without Lightning (tiny settings)."""

from __future__ import annotations

import functools
import math
import runpy
from pathlib import Path

import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--time-limit=12",
    "--collections=6",
    "--num-envs=2",
    "--frames-per-batch=16",
    "--updates-per-collection=2",
    "--batch-size=4",
    "--warmup-episodes=2",
    "--simulations=3",
    "--d-model=16",
    "--n-layers=1",
    "--n-heads=2",
]


def test_train_minimal_trains_every_head_with_finite_losses():
    result = runpy.run_path(str(ROOT / "examples" / "train_minimal.py"))["main"]([*TINY, "--seed=3"])
    assert result["env_steps"] == 6 * 16
    assert result["losses"], "no update ran"
    assert set(result["losses"][0]) == {"dynamics", "action", "value", "policy"}
    assert all(math.isfinite(v) for logs in result["losses"] for v in logs.values())
    model, initial = result["model"], result["initial_parameters"]
    groups = {"transformer": model.transformer_parameters(), **model.head_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group, params in groups.items():
        assert any(not torch.equal(p.detach(), initial[names[id(p)]]) for p in params), f"{group} did not change"


def test_train_minimal_trains_the_shipped_agent():
    """Its agent, built from Python objects, is the one configs/cartpole.yaml builds (diagnostics aside: the example
    logs nothing), so the example cannot drift from the shipped setup unnoticed."""
    from emotion_rl.cli import main
    from emotion_rl.data.envs import probe_env

    example = runpy.run_path(str(ROOT / "examples" / "train_minimal.py"))
    agent = example["make_agent"](example["parse_args"]([]), probe_env("CartPole-v1"))
    shipped = main([f"--config={ROOT / 'configs' / 'cartpole.yaml'}", "--trainer.logger=false"], run=False).model
    logging_only = ("log_diagnostics", "diagnostics_interval")
    mine = {k: v for k, v in agent.hparams.items() if k not in logging_only}
    assert mine == {k: v for k, v in shipped.hparams.items() if k not in logging_only}


# The shipped config shrunk as the CLI tests shrink it (tests/conftest.py TINY), and the example's same settings.
CLI_TINY = [
    "--model.d_model=16",
    "--model.n_layers=1",
    "--model.n_heads=2",
    "--model.planner.init_args.num_simulations=3",
    "--data.batch_size=2",
    "--data.time_limit=40",
]
EXAMPLE_TINY = ["--d-model=16", "--n-layers=1", "--n-heads=2", "--simulations=3", "--batch-size=2", "--time-limit=40"]


def cartpole_episodes() -> TensorDict:
    """A collector batch of CartPole's shape ``[2, 40]``: env 0 plays one episode cut by the time limit (40 steps),
    env 1 one that terminates after 7 steps and one that terminates at step 39."""
    generator = torch.Generator().manual_seed(0)
    observation = 0.1 * torch.randn(2, 41, 4, generator=generator)
    action = torch.randint(0, 2, (2, 40), generator=generator)
    flag = functools.partial(torch.zeros, 2, 40, 1, dtype=torch.bool)
    is_init, done, truncated = flag(), flag(), flag()
    is_init[0, 0] = is_init[1, 0] = is_init[1, 7] = True
    done[0, 39] = done[1, 6] = done[1, 39] = truncated[0, 39] = True
    return TensorDict(
        observation=observation[:, :40],
        action=torch.nn.functional.one_hot(action, 2),
        emotion=torch.randint(0, 8, (2, 40), generator=generator),
        policy_target=torch.softmax(torch.randn(2, 40, 8, generator=generator), -1),
        is_init=is_init,
        next=TensorDict(
            observation=observation[:, 1:],
            reward=torch.ones(2, 40, 1),
            done=done,
            truncated=truncated,
            terminated=done & ~truncated,
            batch_size=[2, 40],
        ),
        batch_size=[2, 40],
    )


def test_train_minimal_stores_and_samples_what_the_cli_does_so_its_value_targets_are_the_shipped_ones():
    """The same collector batch (an episode cut by the time limit among them) through the example's data side and
    the command line's (`fit --config configs/cartpole.yaml`), one model: the stored episodes, the sampled windows
    and the value targets of every shipped option (returns bootstrapped at the time limit, targets at imagined
    tokens) agree, so an option the example sets cannot be silently off there."""
    from emotion_rl.cli import main
    from emotion_rl.data.envs import probe_env

    example = runpy.run_path(str(ROOT / "examples" / "train_minimal.py"))
    args = example["parse_args"](EXAMPLE_TINY)
    info = probe_env(args.env, args.time_limit)
    agent = example["make_agent"](args, info)
    cli = main([f"--config={ROOT / 'configs' / 'cartpole.yaml'}", *CLI_TINY, "--trainer.logger=false"], run=False)
    shipped, data = cli.model, cli.datamodule.connect(cli.model)
    agent.load_state_dict(shipped.state_dict())
    assembler, replay = example["make_data"](args, info, agent)

    mine, theirs = assembler.ingest(cartpole_episodes()), data.make_assembler().ingest(cartpole_episodes())
    assert (mine == theirs).all(), "the example stores other episodes than the command line"
    assert mine["bootstrap"][0, :40].abs().min() > 0 and mine["bootstrap"][1].eq(0).all()  # only the cut one

    replay.extend(mine)
    data.replay.extend(theirs)
    replay.seed(1), data.replay.seed(1)
    windows, expected = example["sample_batch"](args, replay), data._sample_batch()
    assert (windows == expected).all(), "the example samples other training batches than the command line"
    for batch in (mine, windows):
        for got, want in zip(agent.losses.value.targets(batch), shipped.losses.value.targets(batch), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    literal = shipped.losses.value.target.__class__().targets(mine, shipped.model, args.gamma, 0.02)[0]
    assert not torch.allclose(literal[0], agent.losses.value.targets(mine)[0][0])  # the bootstrap counts
