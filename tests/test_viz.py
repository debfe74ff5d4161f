"""The plots, the search tree drawing, the episode GIF, the viz command line, and the loggers of a fit."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensordict import TensorDict

from emotion_rl import EmotionAgent, EmotionMCTS, cli, viz
from emotion_rl.cli import add_tensorboard, tensorboard_available
from emotion_rl.data.envs import make_env
from emotion_rl.data.episodes import discounted_returns
from emotion_rl.data.rollout import play
from emotion_rl.mcts.rules import GumbelRoot
from emotion_rl.viz import (
    draw_search_tree,
    episode_outputs,
    play_episode,
    plot_curves,
    plot_diagnostics,
    plot_emotion_actions,
    plot_emotion_map,
    plot_emotion_values,
    plot_metrics,
    plot_run_comparison,
    plot_search_sweep,
    plot_visits_vs_prior,
    read_curves,
    render_episode,
    search_edges,
)
from emotion_rl.viz.__main__ import load_agent
from emotion_rl.viz.__main__ import main as viz_main

from conftest import CONFIG, TINY, random_history

TINY = [*TINY, "--trainer.log_every_n_steps=1", "--trainer.enable_model_summary=false"]


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def assert_labelled(fig) -> None:
    """Every panel with data has a title and both axis labels (units are part of the label text)."""
    for ax in fig.axes:
        if not ax.has_data() or ax.get_label() == "<colorbar>":
            continue
        if any(other is not ax and other.get_title() for other in ax.get_shared_x_axes().get_siblings(ax)):
            assert ax.get_ylabel(), "a twin axis has no label"  # a second y axis of a titled panel
            continue
        assert ax.get_title(), f"a panel has no title: {ax}"
        assert ax.get_xlabel() and ax.get_ylabel(), f"panel {ax.get_title()!r} lacks an axis label"


def tiny_agent(max_episode_steps: int = 30, seed: int = 0, context_window: int | None = None) -> EmotionAgent:
    torch.manual_seed(seed)
    return EmotionAgent(
        obs_dim=4,
        n_actions=2,
        max_episode_steps=max_episode_steps,
        context_window=context_window,
        d_model=16,
        n_layers=1,
        n_heads=2,
        planner=EmotionMCTS(4),
    )


# ---------------------------------------------------------------------------------------------------- metrics plots
def write_metrics(path: Path) -> list[dict]:
    """A metrics.csv in the CSVLogger's layout: training rows every batch, a greedy evaluation at batch 3."""
    header = [
        "emotion/usage_0",
        "emotion/usage_1",
        "episode/env_steps",
        "episode/return",
        "epoch",
        "step",
        "train/phase1_dynamics_loss",
        "train/phase2_action_loss",
        "train/phase2_imagined_value",
        "train/phase3_value_loss",
        "train/phase4_policy_loss",
        "val/return_mean",
        "val/return_std",
    ]
    rows = []
    for step in range(6):
        rows.append(
            {
                "emotion/usage_0": 0.25,
                "emotion/usage_1": 0.75,
                "episode/env_steps": 64 * (step + 1),
                "episode/return": 10.0 + 3 * step,
                "epoch": 0,
                "step": step,
                "train/phase1_dynamics_loss": 1.0 / (step + 1),
                "train/phase2_action_loss": -0.1 * step,
                "train/phase2_imagined_value": 0.1 * step,
                "train/phase3_value_loss": 0.5,
                "train/phase4_policy_loss": 2.0 - 0.1 * step,
            }
        )
    rows.append({"epoch": 0, "step": 3, "val/return_mean": 42.0, "val/return_std": 4.0})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_plot_command_writes_a_png_with_the_named_panels(tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    write_metrics(metrics)
    out = tmp_path / "curves.png"
    assert viz.main(["plot", str(metrics), "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300
    fig = plot_metrics(metrics)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "Return vs environment steps",
        "Phase 1: dynamics loss",
        "Phase 2: action loss",
        "Phase 3: value loss",
        "Phase 4: policy loss",
        "Emotion usage during collection",
    ]
    assert_labelled(fig)
    assert fig.axes[0].get_xlabel() == "environment steps"
    # the return panel plots the logged returns against the logged environment steps
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), [64, 128, 192, 256, 320, 384])
    np.testing.assert_allclose(line.get_ydata(), [10, 13, 16, 19, 22, 25])
    # the greedy evaluation at batch 3 sits at the environment steps of batch 3
    evaluation = [c for c in fig.axes[0].containers if c.get_label().startswith("greedy")][0]
    np.testing.assert_allclose(evaluation.lines[0].get_xydata(), [[256, 42.0]])
    # phase 1 shows its loss per batch
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [1 / (s + 1) for s in range(6)])


def write_diagnostics(path: Path, with_search: bool = True) -> None:
    """A metrics.csv with diagnostics every batch and, optionally, the search metrics at each collection."""
    rows = write_metrics(path)
    for row in rows:
        if "train/phase1_dynamics_loss" not in row:
            continue
        step = row["step"]
        row.update(
            {
                "diagnostics/action_entropy_0": 0.6 - 0.05 * step,
                "diagnostics/action_entropy_1": 0.3,
                "diagnostics/action_agreement": 0.5,
                "diagnostics/imagined_value_bias": 0.01 * step,
                "diagnostics/imagined_value_error_true": 0.2,
            }
        )
        if with_search:
            row.update({"search/kl_target_prior": 0.1 * step, "search/argmax_agreement": 1.0 - 0.1 * step})
    header = sorted({key for row in rows for key in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)


def test_diagnostics_figure_has_its_panels_and_notes_what_is_missing(tmp_path):
    metrics = tmp_path / "metrics.csv"
    write_diagnostics(metrics)
    fig = plot_diagnostics(metrics)
    assert [ax.get_title() for ax in fig.axes] == [
        "Action-head entropy per emotion",
        "Action agreement between emotions",
        "Imagined value bias",
        "Imagined value errors",
        "Search vs prior: KL(policy target || prior)",
        "Search vs prior: argmax agreement",
    ]
    assert_labelled(fig)
    entropy, _, _, errors, kl, agreement = fig.axes
    assert [line.get_label() for line in entropy.lines] == ["e0", "e1"]
    np.testing.assert_allclose(entropy.lines[0].get_xdata(), [64 * (s + 1) for s in range(6)])  # env steps
    np.testing.assert_allclose(kl.lines[0].get_ydata(), [0.1 * s for s in range(6)])
    np.testing.assert_allclose(agreement.lines[0].get_ydata(), [1.0 - 0.1 * s for s in range(6)])
    assert len(errors.lines) == 1  # only the error on the true next state was logged
    by_batch = plot_diagnostics(metrics, x="batch")
    np.testing.assert_allclose(by_batch.axes[4].lines[0].get_xdata(), range(6))
    assert by_batch.axes[4].get_xlabel().startswith("training batch")

    write_diagnostics(metrics, with_search=False)
    notes = texts(plot_diagnostics(metrics))
    assert (
        "search/kl_target_prior, search/kl_visits_prior not logged" in notes
        and "search/argmax_agreement not logged" in notes
    )
    write_metrics(metrics)  # neither diagnostics nor search metrics
    with pytest.raises(ValueError, match="none of the diagnostics"):
        plot_diagnostics(metrics)


def test_plot_command_writes_into_the_runs_folder_by_default(tmp_path, monkeypatch, capsys):
    run = tmp_path / "runs" / "cartpole" / "version_0"
    run.mkdir(parents=True)
    write_metrics(run / "metrics.csv")
    monkeypatch.chdir(tmp_path)
    assert viz.main(["plot", "runs/cartpole/version_0/metrics.csv"]) == 0
    assert (run / "curves.png").is_file() and not (tmp_path / "curves.png").exists()
    assert f"wrote {Path('runs/cartpole/version_0/curves.png')}" in capsys.readouterr().out


def test_plot_command_writes_the_diagnostics_figure_next_to_the_curves_when_logged(tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    write_diagnostics(metrics)
    out = tmp_path / "curves.png"
    assert viz.main(["plot", str(metrics), "--out", str(out)]) == 0
    extra = tmp_path / "curves_diagnostics.png"
    for path in (out, extra):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 600
    assert str(extra) in capsys.readouterr().out
    write_metrics(metrics)  # no diagnostics: only the curves
    plain = tmp_path / "plain.png"
    assert viz.main(["plot", str(metrics), "--out", str(plain)]) == 0
    assert plain.exists() and not (tmp_path / "plain_diagnostics.png").exists()


def test_plot_command_errors_for_a_missing_csv(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        viz.main(["plot", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert "metrics file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_command_errors_for_a_csv_without_training_metrics(tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,other\n0,1,2.0\n")
    with pytest.raises(SystemExit):
        viz.main(["plot", str(metrics), "--out", str(tmp_path / "x.png")])
    assert "none of the training metrics" in capsys.readouterr().err


def test_run_comparison_overlays_each_run(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_metrics(first)
    write_metrics(second)
    fig = plot_run_comparison({"literal": first, "max_value": second})
    assert_labelled(fig)
    labels = [line.get_label() for line in fig.axes[1].lines]
    assert labels == ["literal", "max_value"]


# ---------------------------------------------------------------------------------------------------- the search
def hand_tree() -> TensorDict:
    """A search of 4 simulations, 3 emotions, worked by hand.

    Root: P = [0.5, 0.3, 0.2]; e0 visited 3 times (W = 1.5, Q = 0.5) and expanded into node 1; e1 once (W = -0.2).
    Node 1 (depth 1): P = [0.1, 0.6, 0.3]; e1 visited once (W = 0.7); e0 and e2 unvisited.
    """
    m, e = 5, 3
    tree = TensorDict(
        prior=torch.zeros(m, e),
        child_visits=torch.zeros(m, e, dtype=torch.long),
        child_value_sum=torch.zeros(m, e),
        child_value=torch.zeros(m, e),
        child_state=torch.zeros(m, e, 2),
        children=torch.full((m, e), -1),
        node_depth=torch.full((m,), -1),
        num_nodes=torch.tensor(2),
        batch_size=[],
    )
    tree["prior"][0] = torch.tensor([0.5, 0.3, 0.2])
    tree["prior"][1] = torch.tensor([0.1, 0.6, 0.3])
    tree["child_visits"][0] = torch.tensor([3, 1, 0])
    tree["child_visits"][1] = torch.tensor([0, 1, 0])
    tree["child_value_sum"][0] = torch.tensor([1.5, -0.2, 0.0])
    tree["child_value_sum"][1] = torch.tensor([0.0, 0.7, 0.0])
    tree["child_value"][0] = torch.tensor([0.4, -0.2, 0.9])
    tree["children"][0, 0] = 1
    tree["node_depth"][0], tree["node_depth"][1] = 0, 1
    return TensorDict(tree=tree.unsqueeze(0), batch_size=[1])


def test_draw_search_tree_shows_the_hand_checked_n_q_p():
    fig = draw_search_tree(hand_tree())
    labels = texts(fig)
    assert "root  N=4" in labels
    assert "e0  N=3  Q=+0.500  P=0.500" in labels
    assert "e1  N=1  Q=-0.200  P=0.300" in labels
    assert "e2  N=0  Q=+0.000  P=0.200" in labels  # unvisited root child: still drawn
    assert "e1  N=1  Q=+0.700  P=0.600" in labels  # node 1's visited child, at depth 2
    assert len(labels) == 5  # node 1's unvisited children are left out
    assert_labelled(fig)
    depth_two = [e for e in search_edges(hand_tree()) if e.depth == 2]
    assert [(e.parent, e.emotion, e.visits) for e in depth_two] == [(1, 1, 1)]


def test_draw_search_tree_of_a_real_search_matches_its_arrays(tiny_model):
    history = random_history(2, 5)
    result = EmotionMCTS(num_simulations=40, max_depth=3).search(tiny_model, history)
    for index in range(2):
        edges = search_edges(result, index)
        tree = result["tree"][index]
        assert sum(e.visits for e in edges if e.depth == 1) == 40
        assert max(e.depth for e in edges) <= 3
        for edge in edges:
            assert edge.visits == int(tree["child_visits"][edge.parent, edge.emotion])
            assert edge.prior == pytest.approx(float(tree["prior"][edge.parent, edge.emotion]))
            if edge.child >= 0:  # expanded on its second visit (spec 1.4); later visits went to its children
                below = sum(e.visits for e in edges if e.parent == edge.child)
                assert below == edge.visits - 2
        labels = texts(draw_search_tree(result, index))
        for edge in edges:
            assert f"e{edge.emotion}  N={edge.visits}  Q={edge.q:+.3f}  P={edge.prior:.3f}" in labels


def test_visits_vs_prior_bars_are_the_search_distribution_and_prior(tiny_model):
    result = EmotionMCTS(num_simulations=24).search(tiny_model, random_history(1, 4))
    fig = plot_visits_vs_prior(result)
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    np.testing.assert_allclose(heights[:8], result["visit_distribution"][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(heights[8:16], result["prior"][0].numpy(), atol=1e-6)
    assert "24 simulations" in ax.get_title()
    assert_labelled(fig)


def test_search_sweep_rows_are_the_prior_then_each_setting(tiny_model):
    history = random_history(1, 4)
    fig = plot_search_sweep(tiny_model, history, simulations=(4, 16), c_pucts=(0.5, 2.0), num_simulations=16)
    assert_labelled(fig)
    grid = fig.axes[0].images[0].get_array()
    expected = EmotionMCTS(16, 1.0).search(tiny_model, history)["visit_distribution"][0].numpy()
    np.testing.assert_allclose(grid[2], expected, atol=1e-6)
    np.testing.assert_allclose(grid[0], EmotionMCTS(4).search(tiny_model, history)["prior"][0].numpy(), atol=1e-6)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["prior P", "4 sims", "16 sims"]


# ---------------------------------------------------------------------------------------------------- playing
def test_render_episode_gif_has_one_frame_per_step(tmp_path):
    agent = tiny_agent()
    path = tmp_path / "episode.gif"
    record = render_episode(agent, path, "CartPole-v1", seed=3, scale=0.5)
    assert 1 <= record.length <= 30  # the model's context holds 30 real steps
    assert len(record.frames) == record.length
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == record.length
        assert gif.size == (300, 200)  # CartPole's 600 x 400 frame at scale 0.5
    # the same greedy episode without rendering: rendering does not change what the agent does
    again = play_episode(agent, "CartPole-v1", seed=3)
    assert torch.equal(again.action, record.action) and torch.equal(again.emotion, record.emotion)


def test_play_episode_records_the_packages_own_rollout_of_the_policy():
    agent = tiny_agent()
    record = play_episode(agent, "CartPole-v1", seed=2, max_steps=12)
    policy = agent.make_policy(greedy=True, generator=torch.Generator().manual_seed(2))
    steps = play(make_env("CartPole-v1", 1, seed=2, categorical_action_encoding=True), policy, 12)[0]
    assert record.length == steps.shape[0]
    torch.testing.assert_close(record.observation, steps["observation"])
    torch.testing.assert_close(record.reward, steps["next", "reward"].reshape(-1))
    assert torch.equal(record.action, steps["action"]) and torch.equal(record.emotion, steps["emotion"])
    assert record.terminated == bool(steps["next", "terminated"][-1])


def test_episode_outputs_are_the_model_outputs_at_each_real_step():
    agent = tiny_agent()
    record = play_episode(agent, "CartPole-v1", seed=1, max_steps=12)
    outputs = episode_outputs(agent.model, record)
    assert outputs.shape == (record.length,)
    for t in (0, record.length // 2, record.length - 1):
        at_t = agent.model.evaluate(record.history(t))[0]
        torch.testing.assert_close(outputs["policy"][t], at_t["policy"])
        torch.testing.assert_close(outputs["values"][t], at_t["values"])
    # the greedy policy acted through the chosen emotion's action head: argmax of A^e(h_t)
    chosen = outputs["action_logits"][torch.arange(record.length), record.emotion].argmax(-1)
    assert torch.equal(chosen, record.action)


def test_a_windowed_agent_plays_past_its_window_and_its_outputs_are_read_on_the_same_windows():
    agent = tiny_agent(context_window=4)
    record = play_episode(agent, "CartPole-v1", seed=1, max_steps=12)
    assert record.length > 4, "the episode must outgrow the window for this test to mean anything"
    outputs = episode_outputs(agent.model, record)
    for t in range(record.length):
        history = record.history(t, window=4)
        assert history.shape == (1, min(t + 1, 4))
        at_t = agent.model.evaluate(history)[0]
        torch.testing.assert_close(outputs["policy"][t], at_t["policy"])
        torch.testing.assert_close(outputs["values"][t], at_t["values"])
    # the greedy policy acted through the chosen emotion's action head on its window: argmax of A^e(h_t)
    chosen = outputs["action_logits"][torch.arange(record.length), record.emotion].argmax(-1)
    assert torch.equal(chosen, record.action)


def test_emotion_plots_are_labelled_and_show_the_heads():
    agent = tiny_agent()
    records = [play_episode(agent, "CartPole-v1", seed=s, max_steps=15) for s in range(2)]
    for fig in (
        plot_emotion_map(records),
        plot_emotion_actions(agent.model, records),
        plot_emotion_values(agent.model, records, return_scale=0.01),
    ):
        assert_labelled(fig)
    fig = plot_emotion_actions(agent.model, records)
    probs = torch.cat([episode_outputs(agent.model, r)["action_logits"].softmax(-1) for r in records]).mean(0)
    left = [patch.get_height() for patch in fig.axes[0].patches[:8]]
    np.testing.assert_allclose(left, probs[:, 0].numpy(), atol=1e-5)
    # the stars: mean actual discounted return (spec 2.2.2) of the steps where each emotion was chosen
    gamma = 0.9
    fig = plot_emotion_values(agent.model, records, gamma=gamma)
    stars = next(line for line in fig.axes[0].lines if line.get_marker() == "*").get_ydata()
    emotion = torch.cat([r.emotion for r in records])
    returns = torch.cat([discounted_returns(r.reward, gamma) for r in records]).double()
    expected = [returns[emotion == e].mean().item() if (emotion == e).any() else np.nan for e in range(8)]
    np.testing.assert_allclose(stars, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- a real fit
def fit(save_dir: Path, max_steps: int) -> Path:
    run = cli.main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            f"--trainer.max_steps={max_steps}",
            f"--trainer.logger.init_args.save_dir={save_dir}",
        ]
    )
    return Path(run.trainer.log_dir)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> Path:
    """A tiny fit of the shipped config (3 batches): its log folder."""
    return fit(tmp_path_factory.mktemp("runs"), max_steps=12)


def test_fit_without_tensorboard_logs_csv_only(tmp_path, monkeypatch):
    for name in ("tensorboard", "tensorboardX"):  # as if not installed: find_spec and import both fail
        monkeypatch.setitem(sys.modules, name, None)
    assert not tensorboard_available()
    log_dir = fit(tmp_path, max_steps=4)
    assert (log_dir / "metrics.csv").is_file()
    assert not list(log_dir.glob("events.out.tfevents.*"))
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_fit_logs_tensorboard_next_to_the_csv(fitted_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(fitted_run.glob("events.out.tfevents.*"))
    assert len(events) == 1 and (fitted_run / "metrics.csv").is_file()
    tags = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    for tag in ("train/phase1_dynamics_loss", "episode/return", "emotion/usage_0"):
        assert tag in tags


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_twin_only_for_a_single_csv_logger(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "tensorboard_available", lambda: True)
    csv_logger = CSVLogger(tmp_path, name="run")
    trainer = add_tensorboard(Trainer(logger=csv_logger, enable_progress_bar=False, enable_model_summary=False))
    assert [type(x) for x in trainer.loggers] == [CSVLogger, TensorBoardLogger]
    assert trainer.loggers[1].log_dir == csv_logger.log_dir  # one folder per run
    assert add_tensorboard(Trainer(logger=False)).loggers == []
    both = [CSVLogger(tmp_path), CSVLogger(tmp_path, name="other")]
    assert add_tensorboard(Trainer(logger=both)).loggers == both


def test_plot_command_reads_a_real_fit(fitted_run, tmp_path):
    out = tmp_path / "curves.png"
    assert viz.main(["plot", str(fitted_run / "metrics.csv"), "--out", str(out)]) == 0
    fig = plot_metrics(fitted_run / "metrics.csv")
    for ax in fig.axes:  # every panel found its metric under the name the agent logs
        assert not any("not logged" in t.get_text() for t in ax.texts), ax.get_title()
    assert (tmp_path / "curves_diagnostics.png").is_file()  # the shipped config logs diagnostics/* and search/*
    diagnostics = plot_diagnostics(fitted_run / "metrics.csv")
    noted = [ax.get_title() for ax in diagnostics.axes if any("not logged" in t.get_text() for t in ax.texts)]
    assert not noted, noted


def test_render_and_tree_commands_read_a_checkpoint(fitted_run, tmp_path, capsys):
    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    gif = tmp_path / "episode.gif"
    assert viz.main(["render", "--config", CONFIG, "--ckpt_path", ckpt, "--out", str(gif), "--seed", "1"]) == 0
    frames = int(capsys.readouterr().out.split(": ")[1].split()[0])
    with Image.open(gif) as image:
        assert image.n_frames == frames
    png = tmp_path / "tree.png"
    assert viz.main(["tree", "--ckpt_path", ckpt, "--out", str(png), "--step", "3"]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG"
    with pytest.raises(SystemExit) as exit_info:
        viz.main(["render", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--out", str(gif)])
    assert exit_info.value.code == 2 and "checkpoint not found" in capsys.readouterr().err


def test_tree_command_searches_with_the_agents_own_planner(fitted_run, tmp_path, monkeypatch):
    """The drawn search is the agent's (its root rule, Q transform, ...), with only the flags' settings changed."""
    searched = []
    search = EmotionMCTS.search
    monkeypatch.setattr(EmotionMCTS, "search", lambda self, *a, **k: searched.append(self) or search(self, *a, **k))
    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    assert viz.main(["tree", "--ckpt_path", ckpt, "--out", str(tmp_path / "t.png"), "--num_simulations", "9"]) == 0
    agent = load_agent(ckpt)
    drawn = searched[-1]
    assert drawn.num_simulations == 9 != agent.planner.num_simulations
    assert type(drawn.root_rule) is type(agent.planner.root_rule) is GumbelRoot
    assert (drawn.q_transform, drawn.c_puct) == (agent.planner.q_transform, agent.planner.c_puct)


def test_metrics_nan_cells_are_skipped(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,episode/env_steps,episode/return\n0,64,nan\n1,128,12.0\n")
    line = plot_metrics(metrics).axes[0].lines[0]
    assert list(line.get_ydata()) == [12.0] and not any(math.isnan(v) for v in line.get_xdata())


def test_evaluation_curves_get_one_panel_per_decision_and_the_command_line_writes_them(tmp_path):
    from emotion_rl.viz.curves import curve_keys

    paired = {"variant": "emotion", "seed": 0, "budget": 3000, "curve": [
        {"env_steps": 1000, "return_mean": 100.0, "return_mean_by_action": 120.0},
        {"env_steps": 2000, "return_mean": 300.0, "return_mean_by_action": 280.0},
    ]}  # fmt: skip
    plain = {"budget": 3000, "curve": [{"env_steps": 1000, "return_mean": 50.0}]}
    paths = [tmp_path / "a.json", tmp_path / "ppo_s1.json"]
    for path, result in zip(paths, (paired, plain), strict=True):
        path.write_text(json.dumps(result))
    runs = read_curves(paths)
    assert list(runs) == ["emotion seed 0", "ppo_s1"] and curve_keys(runs) == ["return_mean", "return_mean_by_action"]
    fig = plot_curves(runs, threshold=475.0)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["configured decision", "decision: action"]
    assert [len(ax.get_lines()) for ax in axes] == [3, 2]  # both runs (+ the threshold); only the paired run
    out = tmp_path / "curves.png"
    assert viz_main(["curves", *map(str, paths), "--out", str(out)]) == 0 and out.stat().st_size > 0
    (tmp_path / "bad.json").write_text("{}")
    for bad in ("missing.json", "bad.json"):
        with pytest.raises(SystemExit) as exit_info:
            viz_main(["curves", str(tmp_path / bad), "--out", str(out)])
        assert exit_info.value.code == 2
