"""What a researcher sees: learning curves, the search tree, the emotions, and the agent playing (issue 6).

Every plotting function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state: a
notebook shows a returned figure, a script calls ``fig.savefig``). Each panel has a title and labelled axes with
units. Needs the optional extra ``viz`` (``pip install -e ".[viz]"``: matplotlib, pillow, and pygame, which
gymnasium uses to draw CartPole's ``rgb_array`` frames).

Command line (``python -m emotion_rl.viz --help``)::

    python -m emotion_rl.viz plot runs/cartpole/version_0/metrics.csv --out curves.png
    python -m emotion_rl.viz render --config configs/cartpole.yaml --ckpt_path runs/.../last.ckpt --out episode.gif
    python -m emotion_rl.viz tree --config configs/cartpole.yaml --ckpt_path runs/.../last.ckpt --out tree.png

Units: returns are sums of environment rewards; the model's values, ``Q`` and the imagined value are in the
agent's value units, ``return_scale * G`` (the CartPole config uses 0.01, so 1.0 means a discounted return of 100).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

try:
    from matplotlib.figure import Figure
    from PIL import Image, ImageDraw
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"emotion_rl.viz needs matplotlib and pillow ({error}); install them with: pip install -e '.[viz]'"
    ) from error

from emotion_rl.episodes import discounted_returns
from emotion_rl.history import window_index
from emotion_rl.search import EmotionMCTS

__all__ = [
    "CARTPOLE_OBSERVATION",
    "EpisodeRecord",
    "SearchEdge",
    "draw_search_tree",
    "emotion_color",
    "inline_figures",
    "episode_outputs",
    "load_agent",
    "main",
    "play_episode",
    "plot_emotion_actions",
    "plot_emotion_map",
    "plot_emotion_usage",
    "plot_emotion_values",
    "plot_metrics",
    "plot_run_comparison",
    "plot_search_sweep",
    "plot_visits_vs_prior",
    "read_metrics",
    "render_episode",
    "search_edges",
    "show_gif",
]

#: CartPole-v1's observation entries with their units (gymnasium's documentation).
CARTPOLE_OBSERVATION = (
    "cart position (m)",
    "cart velocity (m/s)",
    "pole angle (rad)",
    "pole angular velocity (rad/s)",
)
PHASE_PANELS = (
    ("train/phase1_dynamics_loss", "Phase 1: dynamics loss", "||Z - s_next||^2 (observation units^2)"),
    ("train/phase2_action_loss", "Phase 2: action loss", "loss (value units for max_value)"),
    ("train/phase3_value_loss", "Phase 3: value loss", "(V - return_scale G)^2 (value units^2)"),
    ("train/phase4_policy_loss", "Phase 4: policy loss", "cross-entropy to MCTS visits (nats)"),
)
BATCH_AXIS = "training batch (4 optimizer steps each)"


def emotion_color(emotion: int) -> tuple[float, float, float, float]:
    """The colour of ``emotion`` in every plot and GIF (matplotlib's ``tab10``, emotion k -> colour k)."""
    import matplotlib

    return matplotlib.colormaps["tab10"](emotion % 10)


# ---------------------------------------------------------------------------------------------------- metrics
def read_metrics(csv_path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``CSVLogger`` ``metrics.csv`` as ``{column: value}``, empty cells left out (a row holds what was
    logged at its ``step``). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an empty one."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with open(path, newline="") as f:
        rows = [
            {key: float(value) for key, value in row.items() if key is not None and value not in ("", None)}
            for row in csv.DictReader(f)
        ]
    if not rows:
        raise ValueError(f"{path} has no metric rows")
    return rows


def _series(rows: Sequence[Mapping[str, float]], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r[x], r[key]) for r in rows if key in r and x in r and math.isfinite(r[key])]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*pairs, strict=True)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _env_steps_at(rows: Sequence[Mapping[str, float]], batches: np.ndarray) -> np.ndarray | None:
    """Environment steps at each training batch in ``batches`` (the last logged value at or before it)."""
    steps, env_steps = _series(rows, "episode/env_steps")
    if not len(steps):
        return None
    order = np.argsort(steps, kind="stable")
    steps, env_steps = steps[order], env_steps[order]
    index = np.clip(np.searchsorted(steps, batches, side="right") - 1, 0, len(steps) - 1)
    return env_steps[index]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    smooth = np.convolve(values, kernel, mode="valid")
    return np.concatenate([np.full(window - 1, np.nan), smooth])


def _empty(ax, message: str) -> None:  # noqa: ANN001 - matplotlib Axes
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _return_panel(ax, rows: Sequence[Mapping[str, float]]) -> None:  # noqa: ANN001
    env_steps, returns = _series(rows, "episode/return", x="episode/env_steps")
    ax.set_title("Return vs environment steps")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return (sum of rewards)")
    if len(env_steps):
        ax.plot(env_steps, returns, color="tab:blue", alpha=0.3, lw=1, label="training (recent episodes)")
        window = max(1, min(10, len(returns) // 5))
        if window > 1:
            ax.plot(env_steps, _moving_average(returns, window), color="tab:blue", lw=2, label=f"mean of {window} logs")
    batches, val = _series(rows, "val/return_mean")
    if len(batches):
        at = _env_steps_at(rows, batches)
        if at is not None:
            _, std = _series(rows, "val/return_std")
            yerr = std if len(std) == len(val) else None
            ax.errorbar(at, val, yerr=yerr, fmt="o", color="tab:red", capsize=3, label="greedy evaluation (mean, std)")
    if len(env_steps) or len(batches):
        ax.legend(fontsize=7, loc="upper left")
    else:
        _empty(ax, "episode/return not logged")


def _usage_panel(ax, rows: Sequence[Mapping[str, float]], n_emotions: int | None = None) -> None:  # noqa: ANN001
    keys = sorted((k for k in rows[0].keys() | set().union(*rows) if k.startswith("emotion/usage_")), key=_k_index)
    if n_emotions is not None:
        keys = keys[:n_emotions]
    ax.set_title("Emotion usage during collection")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("fraction of steps")
    usable = [r for r in rows if "episode/env_steps" in r and all(k in r and math.isfinite(r[k]) for k in keys)]
    if not keys or not usable:
        _empty(ax, "emotion/usage_k not logged")
        return
    x = np.asarray([r["episode/env_steps"] for r in usable])
    stack = np.asarray([[r[k] for r in usable] for k in keys])
    ax.stackplot(x, stack, colors=[emotion_color(_k_index(k)) for k in keys], labels=[f"e{_k_index(k)}" for k in keys])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="emotion", title_fontsize=7)


def _k_index(key: str) -> int:
    return int(key.rsplit("_", 1)[-1])


def plot_metrics(csv_path: str | os.PathLike, title: str | None = None) -> Figure:
    """A run's logged metrics (``CSVLogger``'s ``metrics.csv``) in six panels.

    Panels: return vs environment steps (training episodes and greedy evaluations), the loss of each of the four
    training phases against the training batch (spec 2.2, 2.3; phase 2 also shows the imagined value of the
    section 4.3 objective when it was logged), and the emotion usage over environment steps. A metric missing
    from the file leaves its panel with a note instead of failing.
    """
    rows = read_metrics(csv_path)
    known = {"episode/return", "val/return_mean", *(key for key, _, _ in PHASE_PANELS)}
    if not known & set().union(*rows):
        raise ValueError(f"{csv_path} holds none of the training metrics ({', '.join(sorted(known))})")
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, 3)
    _return_panel(axes[0, 0], rows)
    for ax, (key, panel_title, ylabel) in zip(
        [axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1]], PHASE_PANELS, strict=True
    ):
        ax.set_title(panel_title)
        ax.set_xlabel(BATCH_AXIS)
        ax.set_ylabel(ylabel)
        x, y = _series(rows, key)
        if not len(x):
            _empty(ax, f"{key} not logged")
            continue
        ax.plot(x, y, lw=1.2, label=key.split("/", 1)[1])
        if key == "train/phase2_action_loss":
            xv, yv = _series(rows, "train/phase2_imagined_value")
            if len(xv) and np.any(yv != 0):
                ax.plot(xv, yv, lw=1.2, ls="--", label="imagined value V(Z(h, A(h)))")
        elif np.all(y > 0) and y.max() / max(y.min(), 1e-12) > 20:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    _usage_panel(axes[1, 2], rows)
    fig.suptitle(title if title is not None else f"Training metrics: {csv_path}")
    return fig


def plot_run_comparison(runs: Mapping[str, str | os.PathLike], title: str | None = None) -> Figure:
    """Several runs side by side (e.g. ``phase2_objective`` literal vs max_value): return vs environment steps,
    greedy evaluations, and the phase-2 action loss and imagined value against the training batch."""
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_return, ax_loss, ax_value = fig.subplots(1, 3)
    for index, (name, path) in enumerate(runs.items()):
        rows = read_metrics(path)
        color = f"C{index}"
        x, y = _series(rows, "episode/return", x="episode/env_steps")
        ax_return.plot(x, y, color=color, lw=1.2, label=f"{name}: training")
        batches, val = _series(rows, "val/return_mean")
        at = _env_steps_at(rows, batches)
        if len(batches) and at is not None:
            ax_return.plot(at, val, "o--", color=color, label=f"{name}: greedy evaluation")
        ax_loss.plot(*_series(rows, "train/phase2_action_loss"), color=color, label=name)
        ax_value.plot(*_series(rows, "train/phase2_imagined_value"), color=color, label=name)
    ax_return.set(title="Return vs environment steps", xlabel="environment steps", ylabel="episode return")
    ax_loss.set(title="Phase 2: action loss", xlabel=BATCH_AXIS, ylabel="loss (value units for max_value)")
    ax_value.set(title="Phase 2: imagined value V(Z(h, A(h)))", xlabel=BATCH_AXIS, ylabel="value (return_scale G)")
    for ax in (ax_return, ax_loss, ax_value):
        ax.legend(fontsize=7)
    fig.suptitle(title or "Runs compared")
    return fig


def plot_emotion_usage(csv_path: str | os.PathLike) -> Figure:
    """Emotion usage over training (``emotion/usage_k`` against environment steps), stacked to 1."""
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    _usage_panel(fig.subplots(), read_metrics(csv_path))
    return fig


# ---------------------------------------------------------------------------------------------------- the search
@dataclass(frozen=True)
class SearchEdge:
    """One child ``e`` of node ``parent`` (spec 1.1): ``N(n, e)``, ``Q = W / N`` (0 unvisited), ``P(n, e)``, the
    stored ``child.value`` and the index of the node it was expanded into (-1: not expanded)."""

    parent: int
    emotion: int
    depth: int  # depth of the child: 1 for the root's children
    visits: int
    q: float
    prior: float
    value: float
    child: int


def _tree_of(search: TensorDictBase, index: int) -> TensorDictBase:
    tree = search.get("tree") if "tree" in search.keys() else search
    if tree.batch_dims:
        tree = tree[index] if tree.batch_dims == 1 else tree.reshape(-1)[index]
    return tree


def search_edges(search: TensorDictBase, index: int = 0, min_visits: int = 1) -> list[SearchEdge]:
    """The edges of one search tree in depth-first order (emotions in order at every node).

    Args:
        search: :meth:`EmotionMCTS.search`'s result (or its ``tree`` entry), batched or not.
        index: which environment of the batch.
        min_visits: edges with fewer visits are left out, with everything under them; the root's children are
            always kept (an unvisited root child still shows its prior).
    """
    tree = _tree_of(search, index)
    visits = tree.get("child_visits")
    value_sum = tree.get("child_value_sum").double()
    prior = tree.get("prior").double()
    value = tree.get("child_value").double()
    children = tree.get("children")
    depth = tree.get("node_depth")
    edges: list[SearchEdge] = []

    def visit(node: int) -> None:
        for e in range(visits.shape[-1]):
            n = int(visits[node, e])
            if node != 0 and n < min_visits:
                continue
            child = int(children[node, e])
            q = float(value_sum[node, e]) / n if n else 0.0
            edges.append(
                SearchEdge(node, e, int(depth[node]) + 1, n, q, float(prior[node, e]), float(value[node, e]), child)
            )
            if child >= 0 and n >= min_visits:
                visit(child)

    visit(0)
    return edges


_BOX = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.3}


def _edge_label(edge: SearchEdge) -> str:
    return f"e{edge.emotion}  N={edge.visits}  Q={edge.q:+.3f}  P={edge.prior:.3f}"


def draw_search_tree(
    search: TensorDictBase,
    index: int = 0,
    min_visits: int = 1,
    title: str | None = None,
) -> Figure:
    """Draw one search tree (spec 1.1 - 1.4), root on the left, one column per depth (up to ``max_depth``).

    Every drawn child is labelled ``e<k>  N=<visits>  Q=<mean value>  P=<prior>``, with N, W, Q and P as in spec
    1.1 (``Q = W / N``, 0 unvisited: SPEC_NOTES 2). Marker size grows with N, colour is the emotion. The root's
    eight children are always drawn; deeper children only with ``N >= min_visits``. A child that was expanded
    (visited twice or more above ``max_depth``, spec 1.4) has its own children in the next column.
    """
    edges = search_edges(search, index, min_visits)
    tree = _tree_of(search, index)
    total = int(tree.get("child_visits")[0].sum())
    # layout: leaves in depth-first order get consecutive rows; a parent sits at the mean row of its children
    by_parent: dict[int, list[int]] = {}
    for i, edge in enumerate(edges):
        by_parent.setdefault(edge.parent, []).append(i)
    rows: dict[int, float] = {}
    next_row = [0]

    def place(i: int) -> float:
        edge = edges[i]
        kids = by_parent.get(edge.child, []) if edge.child >= 0 else []
        if kids:
            rows[i] = float(np.mean([place(k) for k in kids]))
        else:
            rows[i] = float(next_row[0])
            next_row[0] += 1
        return rows[i]

    root_row = float(np.mean([place(i) for i in by_parent.get(0, [])])) if edges else 0.0
    n_rows = max(next_row[0], 1)
    max_depth = max((e.depth for e in edges), default=1)
    fig = Figure(figsize=(4.0 + 3.4 * max_depth, max(3.0, 0.26 * n_rows + 1.2)), layout="constrained")
    ax = fig.subplots()
    incoming = {edge.child: i for i, edge in enumerate(edges) if edge.child >= 0}  # node -> edge leading to it
    for i, edge in enumerate(edges):
        parent_row = root_row if edge.parent == 0 else rows[incoming[edge.parent]]
        ax.plot([edge.depth - 1, edge.depth], [parent_row, rows[i]], color="0.75", lw=0.8, zorder=1)
    for i, edge in enumerate(edges):
        size = 12 + 10 * math.sqrt(edge.visits)
        face = emotion_color(edge.emotion) if edge.visits else "white"
        ax.scatter([edge.depth], [rows[i]], s=size, color=face, edgecolors=emotion_color(edge.emotion), zorder=2)
        label = _edge_label(edge)
        ax.text(edge.depth + 0.06, rows[i], label, fontsize=8, va="center", family="monospace", zorder=3, bbox=_BOX)
    ax.scatter([0], [root_row], s=60, color="black", zorder=2)
    ax.text(-0.06, root_row, f"root  N={total}", fontsize=8, va="center", ha="right", family="monospace")
    ax.set_xlim(-0.9, max_depth + 1.0)
    ax.set_ylim(n_rows - 0.5, -0.8)
    ax.set_xticks(range(max_depth + 1))
    ax.set_xlabel("depth (simulated steps from the real state)")
    ax.set_yticks([])
    ax.set_ylabel(f"children with N >= {min_visits} (root: all)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        title or f"Search tree: {total} simulations. N visits, Q = W/N mean value (value units), P policy prior",
        fontsize=10,
    )
    return fig


def plot_visits_vs_prior(search: TensorDictBase, index: int = 0, title: str | None = None) -> Figure:
    """The root's visit distribution (spec 1.3's output pi) against the policy prior ``P(root, e)``, with each root
    child's ``Q`` on a second axis: where the visits leave the prior, ``Q`` is why."""
    tree = _tree_of(search, index)
    visits = tree.get("child_visits")[0].double()
    prior = tree.get("prior")[0].double().numpy()
    q = torch.where(visits > 0, tree.get("child_value_sum")[0].double() / visits.clamp(min=1), 0.0).numpy()
    counts = visits.numpy()
    total = counts.sum()
    emotions = np.arange(len(counts))
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.38
    bars = ax.bar(emotions - width / 2, counts / max(total, 1), width, color=[emotion_color(e) for e in emotions])
    ax.bar(emotions + width / 2, prior, width, color="white", edgecolor="0.3", hatch="//", label="policy prior P")
    for bar, n in zip(bars, counts, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{int(n)}", ha="center", va="bottom", fontsize=7)
    bars.set_label("visit distribution N / sum N (counts on top)")
    ax.set_xticks(emotions, [f"e{e}" for e in emotions])
    ax.set_xlabel("emotion")
    ax.set_ylabel("probability")
    twin = ax.twinx()
    twin.plot(emotions[counts > 0], q[counts > 0], "kD", ms=4, label="Q = W/N (visited)")
    twin.set_ylabel("Q (value units)")
    handles = ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    ax.legend(
        handles[0] + twin_handles[0],
        handles[1] + twin_handles[1],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
    )
    ax.set_title(title or f"Root visits vs policy prior ({int(total)} simulations)")
    return fig


def plot_search_sweep(
    model: torch.nn.Module,
    history: TensorDictBase,
    simulations: Sequence[int] = (8, 16, 50, 100, 200),
    c_pucts: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    c_puct: float = 1.0,
    num_simulations: int = 50,
    max_depth: int = 3,
) -> Figure:
    """How the root visit distribution moves with the number of simulations (at ``c_puct``) and with ``c_puct``
    (at ``num_simulations``), for one real ``history`` ``[1, T]``: two heat maps, the policy prior as the top row."""
    fig = Figure(figsize=(13, 0.45 * (max(len(simulations), len(c_pucts)) + 1) + 1.8), layout="constrained")
    panels = fig.subplots(1, 2)
    sweeps = (
        ([f"{n} sims" for n in simulations], [EmotionMCTS(n, c_puct, max_depth) for n in simulations]),
        ([f"c_puct {c:g}" for c in c_pucts], [EmotionMCTS(num_simulations, c, max_depth) for c in c_pucts]),
    )
    titles = (
        f"Root visit distribution vs simulations (c_puct {c_puct:g})",
        f"Root visit distribution vs c_puct ({num_simulations} simulations)",
    )
    for ax, (labels, planners), panel_title in zip(panels, sweeps, titles, strict=True):
        results = [planner.search(model, history) for planner in planners]
        prior = results[0]["prior"].reshape(-1, results[0]["prior"].shape[-1])[0]
        grid = torch.stack([prior] + [r["visit_distribution"].reshape(-1, len(prior))[0] for r in results])
        grid = grid.double().numpy()
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=max(grid.max(), 1e-9), aspect="auto")
        for (row, col), value in np.ndenumerate(grid):
            ax.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if value < 0.5 * grid.max() else "k",
            )
        ax.set_yticks(range(len(labels) + 1), ["prior P"] + labels)
        ax.set_xticks(range(grid.shape[1]), [f"e{e}" for e in range(grid.shape[1])])
        ax.set_xlabel("emotion")
        ax.set_ylabel("search setting")
        ax.set_title(panel_title, fontsize=10)
        fig.colorbar(image, ax=ax, label="fraction of root visits")
    return fig


# ---------------------------------------------------------------------------------------------------- playing
@dataclass
class EpisodeRecord:
    """One played episode: ``observation`` ``[T, obs]`` (the state each step acted in), ``action``, ``emotion``
    ``[T]``, ``reward`` ``[T]``, the search's ``visit_distribution`` ``[T, E]``, and the rendered ``frames``
    (``rgb_array`` images, one per step, showing the state the step acted in) when rendering was asked for."""

    observation: torch.Tensor
    action: torch.Tensor
    emotion: torch.Tensor
    reward: torch.Tensor
    visit_distribution: torch.Tensor
    terminated: bool
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.action.shape[0])

    @property
    def episode_return(self) -> float:
        return float(self.reward.double().sum())

    def history(self, t: int | None = None, window: int | None = None) -> TensorDict:
        """The real history the agent saw at step ``t`` (default: the last step), ``[1, T]`` in the public
        layout (README "Python API"): entries ``0..t``, with ``a_t = e_t = -1`` and ``r_t = 0`` not yet known.
        ``window``: an agent with a context window (``context_window``) saw only the last ``window`` entries."""
        t = self.length - 1 if t is None else int(t)
        if not 0 <= t < self.length:
            raise IndexError(f"step {t} is outside the episode (0..{self.length - 1})")
        start = 0 if window is None else max(0, t - int(window) + 1)
        action, emotion, reward = (
            self.action[start : t + 1].clone(),
            self.emotion[start : t + 1].clone(),
            self.reward[start : t + 1].clone(),
        )
        action[-1], emotion[-1], reward[-1] = -1, -1, 0.0
        return TensorDict(
            observation=self.observation[start : t + 1].unsqueeze(0).clone(),
            action=action.unsqueeze(0),
            emotion=emotion.unsqueeze(0),
            reward=reward.unsqueeze(0),
            batch_size=[1, t + 1 - start],
        )


def _as_policy(agent, greedy: bool, seed: int):  # noqa: ANN001 - an EmotionAgent or a TorchRL policy
    if hasattr(agent, "make_policy"):
        return agent.make_policy(greedy=greedy, generator=torch.Generator().manual_seed(seed))
    return agent


def play_episode(
    agent,  # noqa: ANN001 - EmotionAgent (anything with make_policy) or an EmotionPolicy-like module
    env_id: str = "CartPole-v1",
    seed: int = 0,
    max_steps: int | None = None,
    greedy: bool = True,
    render: bool = False,
) -> EpisodeRecord:
    """Play one episode of ``env_id`` with the agent's planner (spec 5: search, emotion, action at every step).

    ``greedy``: argmax emotion and action (the evaluation policy); otherwise the agent's temperature and action
    sampling, seeded by ``seed``. The episode ends at termination, at the env's time limit, or after
    ``max_steps`` (default: the env's limit, capped at what the model's context holds unless the policy plans on
    a window of recent steps). ``render`` keeps one ``rgb_array`` frame per step (the state the step acted in).
    """
    policy = _as_policy(agent, greedy, seed)
    context = getattr(policy, "context_length", None)  # real steps the policy's history holds
    if getattr(policy, "history_window", False):
        context = None  # a windowed policy (context_window) plays episodes of any length
    limit = gymnasium.spec(env_id).max_episode_steps
    if max_steps is None:
        max_steps = min(x for x in (limit, context) if x is not None)
    elif context is not None and max_steps > context:
        raise ValueError(f"max_steps={max_steps} does not fit the model's context ({context} real steps at most)")
    env = gymnasium.make(env_id, render_mode="rgb_array" if render else None)
    try:
        obs, _ = env.reset(seed=seed)
        if hasattr(policy, "reset_histories"):
            policy.reset_histories()
        td = TensorDict(
            observation=torch.as_tensor(obs, dtype=torch.float32),
            is_init=torch.ones(1, dtype=torch.bool),
            prev_reward=torch.zeros(1),
        )
        columns: dict[str, list] = {k: [] for k in ("observation", "action", "emotion", "reward", "visit")}
        frames: list[np.ndarray] = []
        terminated = False
        for _ in range(int(max_steps)):
            if render:
                frames.append(_render(env))
            td = policy(td)
            action = td.get("action")
            action = int(action.argmax(-1)) if action.ndim else int(action)
            obs_next, reward, terminated, truncated, _ = env.step(action)
            columns["observation"].append(td.get("observation"))
            columns["action"].append(action)
            columns["emotion"].append(int(td.get("emotion")))
            columns["reward"].append(float(reward))
            columns["visit"].append(td.get("visit_distribution").float())
            if terminated or truncated:
                break
            td = TensorDict(
                observation=torch.as_tensor(obs_next, dtype=torch.float32),
                is_init=torch.zeros(1, dtype=torch.bool),
                prev_reward=torch.tensor([float(reward)]),
            )
    finally:
        env.close()
    return EpisodeRecord(
        observation=torch.stack(columns["observation"]),
        action=torch.tensor(columns["action"]),
        emotion=torch.tensor(columns["emotion"]),
        reward=torch.tensor(columns["reward"]),
        visit_distribution=torch.stack(columns["visit"]),
        terminated=bool(terminated),
        frames=frames,
    )


def _render(env: gymnasium.Env) -> np.ndarray:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # rgb_array frames need no display (pygame, headless)
    try:
        frame = env.render()
    except gymnasium.error.DependencyNotInstalled as error:
        raise RuntimeError(f"rendering {env.spec.id} needs pygame: pip install -e '.[viz]' ({error})") from error
    if frame is None:
        raise RuntimeError(f"{env.spec.id} returned no rgb_array frame")
    return np.asarray(frame)


def render_episode(
    agent,  # noqa: ANN001 - EmotionAgent or an EmotionPolicy-like module
    path: str | os.PathLike = "episode.gif",
    env_id: str = "CartPole-v1",
    seed: int = 0,
    max_steps: int | None = None,
    greedy: bool = True,
    fps: int = 30,
    scale: float = 0.5,
) -> EpisodeRecord:
    """Play one episode (:func:`play_episode`) and write it as an animated GIF, one frame per step.

    Each frame is gymnasium's ``rgb_array`` image of the state the step acted in (CartPole draws with pygame),
    scaled by ``scale``, with a band in the chosen emotion's colour and the text ``t, emotion, action, return``.
    Returns the episode (``len(frames) == length``).
    """
    record = play_episode(agent, env_id, seed=seed, max_steps=max_steps, greedy=greedy, render=True)
    images = []
    running = 0.0
    for t, frame in enumerate(record.frames):
        image = Image.fromarray(frame)
        if scale != 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        draw = ImageDraw.Draw(image)
        emotion, action = int(record.emotion[t]), int(record.action[t])
        color = tuple(round(255 * c) for c in emotion_color(emotion)[:3])
        band = max(4, image.height // 25)
        draw.rectangle([0, 0, image.width, band], fill=color)
        draw.text((4, band + 2), f"t={t}  emotion {emotion}  action {action}  return {running:.0f}", fill=(0, 0, 0))
        running += float(record.reward[t])
        images.append(image.convert("P", palette=Image.Palette.ADAPTIVE))
    if not images:
        raise RuntimeError("the episode has no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # every frame differs (its text), so Pillow keeps them all: frame count == episode length
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return record


def inline_figures(dpi: int = 72) -> None:
    """In a Jupyter notebook, show the figures that cells return (``%matplotlib inline``: the returned
    :class:`~matplotlib.figure.Figure` objects are not pyplot's, so they need its display hook), at ``dpi``.
    Outside IPython it does nothing."""
    import matplotlib

    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.run_line_magic("matplotlib", "inline")
        matplotlib.rcParams["figure.dpi"] = dpi


def show_gif(path: str | os.PathLike):  # noqa: ANN201 - IPython.display.Image, or the path without IPython
    """A notebook display of the GIF at ``path`` (``IPython.display.Image``); the path itself outside IPython."""
    try:
        from IPython.display import Image as IPythonImage
    except ImportError:
        return Path(path)
    return IPythonImage(data=Path(path).read_bytes(), format="gif")


# ---------------------------------------------------------------------------------------------------- emotions
@torch.no_grad()
def episode_outputs(model: torch.nn.Module, record: EpisodeRecord) -> TensorDict:
    """The model's four outputs (spec 2.1) at every step of a played episode, ``[T]``: ``policy`` ``[T, E]``,
    ``values`` ``[T, E]``, ``action_logits`` ``[T, E, A]``, ``dynamics`` ``[T, E, obs]``; one causal pass gives
    ``h_t`` for every step (SPEC_NOTES 11), the same ``h_t`` the search saw. An episode longer than the model's
    context (an agent with ``context_window``) is read as the policy read it: ``h_t`` from the window of the last
    ``context_length - 1`` real steps ending at ``t``, all windows in one batch."""
    was_training = model.training
    model.eval()
    try:
        dtype = next(model.parameters()).dtype
        length, window = record.length, model.context_length - 1
        steps = torch.arange(length)
        if length <= window:  # the whole episode; entry t's action, emotion and reward only feed token t + 1
            index, valid = steps.unsqueeze(0), torch.ones(1, length, dtype=torch.bool)
        else:  # row t: entries max(0, t - window + 1) .. t, left-aligned
            index, valid = window_index(steps, window, length)
        history = TensorDict(
            observation=record.observation[index].to(dtype),
            action=record.action[index],
            emotion=record.emotion[index],
            reward=record.reward[index].to(dtype),
            mask=valid,
            batch_size=index.shape,
        )
        hidden = model.encode(history).hidden
        hidden = hidden[0] if length <= window else hidden[steps, valid.sum(-1) - 1]
        return model.heads(hidden)
    finally:
        model.train(was_training)


def _stack(records: Iterable[EpisodeRecord], key: str) -> torch.Tensor:
    return torch.cat([getattr(r, key) for r in records])


def plot_emotion_map(
    records: Sequence[EpisodeRecord],
    dims: tuple[int, int] = (2, 3),
    labels: Sequence[str] = CARTPOLE_OBSERVATION,
) -> Figure:
    """Which emotion the agent chose where: every step's state (observation entries ``dims``) coloured by the
    emotion chosen there, next to how often each emotion was chosen."""
    obs = _stack(records, "observation").double().numpy()
    emotion = _stack(records, "emotion").numpy()
    n_emotions = records[0].visit_distribution.shape[-1]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, ax_count = fig.subplots(1, 2, width_ratios=[2, 1])
    for e in range(n_emotions):
        chosen = emotion == e
        if chosen.any():
            ax.scatter(obs[chosen, dims[0]], obs[chosen, dims[1]], s=8, color=emotion_color(e), label=f"e{e}")
    name = [labels[d] if d < len(labels) else f"observation[{d}]" for d in dims]
    ax.set(
        xlabel=name[0],
        ylabel=name[1],
        title=f"Emotion chosen per state ({len(emotion)} steps, {len(records)} episodes)",
    )
    ax.legend(fontsize=7, markerscale=2, ncol=2)
    counts = np.bincount(emotion, minlength=n_emotions)
    ax_count.bar(range(n_emotions), counts / max(counts.sum(), 1), color=[emotion_color(e) for e in range(n_emotions)])
    ax_count.set(xlabel="emotion", ylabel="fraction of steps", title="Emotion usage in these episodes")
    ax_count.set_xticks(range(n_emotions), [f"e{e}" for e in range(n_emotions)])
    return fig


def plot_emotion_actions(
    model: torch.nn.Module,
    records: Sequence[EpisodeRecord],
    dim: int = 2,
    labels: Sequence[str] = CARTPOLE_OBSERVATION,
    action_names: Sequence[str] | None = ("push left", "push right"),
    title: str | None = None,
) -> Figure:
    """Each emotion's action head ``softmax(A^e(h))`` (spec 2.1) over the states of ``records``: the mean action
    distribution per emotion, and the probability of the last action against observation entry ``dim``."""
    outputs = [episode_outputs(model, r) for r in records]
    probs = torch.cat([o["action_logits"].softmax(-1) for o in outputs]).double().numpy()  # [S, E, A]
    obs = _stack(records, "observation").double().numpy()
    n_states, n_emotions, n_actions = probs.shape
    names = (
        list(action_names) if action_names and len(action_names) == n_actions else [f"a{a}" for a in range(n_actions)]
    )
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_bar, ax_state = fig.subplots(1, 2)
    mean = probs.mean(0)
    bottom = np.zeros(n_emotions)
    for a in range(n_actions):
        ax_bar.bar(
            range(n_emotions),
            mean[:, a],
            bottom=bottom,
            color=f"C{a}",
            alpha=0.4 + 0.6 * a / max(n_actions - 1, 1),
            label=names[a],
        )
        bottom += mean[:, a]
    ax_bar.set_xticks(range(n_emotions), [f"e{e}" for e in range(n_emotions)])
    ax_bar.set(
        xlabel="emotion", ylabel="mean action probability", title=f"Action distribution per emotion ({n_states} states)"
    )
    ax_bar.set_ylim(0, 1)
    ax_bar.legend(fontsize=7)
    order = np.argsort(obs[:, dim])
    for e in range(n_emotions):
        ax_state.plot(obs[order, dim], probs[order, e, -1], ".", ms=3, color=emotion_color(e), label=f"e{e}")
    xlabel = labels[dim] if dim < len(labels) else f"observation[{dim}]"
    ax_state.set(xlabel=xlabel, ylabel=f"P({names[-1]} | emotion)", title=f"P({names[-1]}) per emotion vs state")
    ax_state.set_ylim(-0.02, 1.02)
    ax_state.legend(fontsize=7, ncol=4, markerscale=3)
    if title:
        fig.suptitle(title)
    return fig


def plot_emotion_values(
    model: torch.nn.Module, records: Sequence[EpisodeRecord], return_scale: float = 1.0, gamma: float = 0.99
) -> Figure:
    """The value heads ``V^e(h)`` (spec 2.1) over the states of ``records``, per emotion, in return units (values
    divided by ``return_scale``), next to the actual discounted return of the steps where the emotion was chosen."""
    outputs = [episode_outputs(model, r) for r in records]
    values = torch.cat([o["values"] for o in outputs]).double().numpy() / return_scale  # [S, E]
    emotion = _stack(records, "emotion").numpy()
    returns = np.concatenate([discounted_returns(r.reward, gamma).double().numpy() for r in records])
    n_emotions = values.shape[1]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    parts = ax.boxplot(
        [values[:, e] for e in range(n_emotions)],
        positions=range(n_emotions),
        widths=0.5,
        showfliers=False,
        patch_artist=True,
    )
    for e, box in enumerate(parts["boxes"]):
        box.set_facecolor(emotion_color(e))
        box.set_alpha(0.6)
    chosen_mean = [returns[emotion == e].mean() if (emotion == e).any() else np.nan for e in range(n_emotions)]
    ax.plot(
        range(n_emotions), chosen_mean, "k*", ms=9, label=f"actual discounted return where chosen (gamma {gamma:g})"
    )
    ax.set_xticks(range(n_emotions), [f"e{e}" for e in range(n_emotions)])
    ax.set(
        xlabel="emotion",
        ylabel="value / return_scale (return units)",
        title=f"Value per emotion V^e over {len(values)} visited states",
    )
    ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------- command line
def load_agent(ckpt_path: str | os.PathLike):  # noqa: ANN201 - EmotionAgent (imported lazily)
    """An :class:`~emotion_rl.EmotionAgent` from a Lightning checkpoint (its hyperparameters rebuild the model)."""
    from emotion_rl.agent import EmotionAgent

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    agent = EmotionAgent.load_from_checkpoint(path, map_location="cpu")
    agent.eval()
    return agent


def _env_id(config: str | None, ckpt_path: str, env_id: str | None) -> str:
    """``--env_id``, else the config's ``data.env_id``, else the checkpoint's datamodule, else CartPole-v1."""
    if env_id:
        return env_id
    if config:
        from omegaconf import OmegaConf

        if not Path(config).is_file():
            raise FileNotFoundError(f"config not found: {config}")
        data = OmegaConf.load(config).get("data") or {}
        if data.get("env_id"):
            return str(data["env_id"])
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return str((checkpoint.get("datamodule_hyper_parameters") or {}).get("env_id", "CartPole-v1"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emotion_rl.viz {plot,render,tree}``; a missing or unreadable input exits with status 2."""
    parser = argparse.ArgumentParser(prog="python -m emotion_rl.viz", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plot = commands.add_parser("plot", help="plot a run's metrics.csv to PNG (no TensorBoard needed)")
    plot.add_argument("metrics", help="metrics.csv written by the CSVLogger (runs/cartpole/version_N/metrics.csv)")
    plot.add_argument("--out", default="curves.png", help="output image (default: curves.png)")
    plot.add_argument("--dpi", type=int, default=80)
    plot.add_argument("--title", default=None)
    for name, text in (
        ("render", "play one greedy episode and write an animated GIF"),
        ("tree", "draw one search tree"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--ckpt_path", required=True, help="Lightning checkpoint of a fit (…/checkpoints/last.ckpt)")
        sub.add_argument("--config", default=None, help="the run's config (its data.env_id is used)")
        sub.add_argument("--env_id", default=None, help="overrides the config's and the checkpoint's env")
        sub.add_argument("--seed", type=int, default=0, help="seed of the environment's reset")
        sub.add_argument("--out", required=True, help="output file (.gif for render, .png for tree)")
    commands.choices["render"].add_argument("--fps", type=int, default=30)
    commands.choices["render"].add_argument("--scale", type=float, default=0.5, help="frame size factor")
    commands.choices["render"].add_argument("--max_steps", type=int, default=None)
    tree = commands.choices["tree"]
    tree.add_argument("--step", type=int, default=20, help="search at this step of a greedy episode (default 20)")
    tree.add_argument("--num_simulations", type=int, default=None, help="default: the checkpoint's")
    tree.add_argument("--c_puct", type=float, default=None, help="default: the checkpoint's")
    tree.add_argument("--min_visits", type=int, default=2, help="draw deeper children with at least this many visits")
    tree.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    sub = commands.choices[args.command]
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        if args.command == "plot":
            plot_metrics(args.metrics, title=args.title).savefig(args.out, dpi=args.dpi)
            print(f"wrote {args.out}")
            return 0
        agent = load_agent(args.ckpt_path)
        env_id = _env_id(args.config, args.ckpt_path, args.env_id)
        if args.command == "render":
            record = render_episode(agent, args.out, env_id, args.seed, args.max_steps, fps=args.fps, scale=args.scale)
            print(f"wrote {args.out}: {record.length} frames, return {record.episode_return:.0f}")
            return 0
        record = play_episode(agent, env_id, seed=args.seed, max_steps=args.step + 1)
        step = min(args.step, record.length - 1)
        planner = EmotionMCTS(
            args.num_simulations or agent.planner.num_simulations,
            agent.planner.c_puct if args.c_puct is None else args.c_puct,
            agent.planner.max_depth,
        )
        result = planner.search(agent.model, record.history(step, window=agent.hparams.get("context_window")))
        title = (
            f"{env_id}, step {step} of a greedy episode (seed {args.seed}): {planner.num_simulations} simulations, "
            f"c_puct {planner.c_puct:g}\nN visits, Q = W/N (value units), P prior; deeper children with N >= "
            f"{args.min_visits}"
        )
        draw_search_tree(result, min_visits=args.min_visits, title=title).savefig(args.out, dpi=args.dpi)
        print(f"wrote {args.out}")
        return 0
    except (FileNotFoundError, ValueError) as error:
        sub.error(str(error))
    return 2  # pragma: no cover - sub.error exits


if __name__ == "__main__":
    sys.exit(main())
