"""The search tree (spec 1.1 - 1.4): its edges, a drawing with N, Q and P, root visits vs prior, search sweeps.

Every function reads :meth:`EmotionMCTS.search`'s result (or its ``tree`` entry). ``Q`` and values are in the
agent's value units, ``return_scale * G``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDictBase

from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.viz.style import Figure, emotion_color

__all__ = ["SearchEdge", "draw_search_tree", "plot_search_sweep", "plot_visits_vs_prior", "search_edges"]


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


def _tree_rows(edges: Sequence[SearchEdge]) -> tuple[dict[int, float], float, int]:
    """``(rows, root_row, n_rows)``: the row of each edge (by index in ``edges``), the root's, and how many rows.
    Leaves in depth-first order get consecutive rows; a parent sits at the mean row of its children."""
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
    return rows, root_row, max(next_row[0], 1)


def _draw_edges(ax, edges: Sequence[SearchEdge], rows: dict[int, float], root_row: float) -> None:  # noqa: ANN001
    """A grey line from each edge's parent to it, then its marker (size with N, colour the emotion) and label."""
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


def _tree_axes(ax, max_depth: int, n_rows: int, min_visits: int) -> None:  # noqa: ANN001 - matplotlib Axes
    """Limits, one tick per depth, the axis labels, no frame but the bottom."""
    ax.set_xlim(-0.9, max_depth + 1.0)
    ax.set_ylim(n_rows - 0.5, -0.8)
    ax.set_xticks(range(max_depth + 1))
    ax.set_xlabel("depth (simulated steps from the real state)")
    ax.set_yticks([])
    ax.set_ylabel(f"children with N >= {min_visits} (root: all)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def draw_search_tree(
    search: TensorDictBase,
    index: int = 0,
    min_visits: int = 1,
    title: str | None = None,
) -> Figure:
    """Draw one search tree (spec 1.1 - 1.4), root on the left, one column per depth (up to ``max_depth``).

    Every drawn child is labelled ``e<k>  N=<visits>  Q=<mean value>  P=<prior>``, with N, W, Q and P as in spec
    1.1 (``Q = W / N``, 0 unvisited: decision 2). Marker size grows with N, colour is the emotion. The root's
    eight children are always drawn; deeper children only with ``N >= min_visits``. A child that was expanded
    (visited twice or more above ``max_depth``, spec 1.4) has its own children in the next column.
    """
    edges = search_edges(search, index, min_visits)
    tree = _tree_of(search, index)
    total = int(tree.get("child_visits")[0].sum())
    rows, root_row, n_rows = _tree_rows(edges)
    max_depth = max((e.depth for e in edges), default=1)
    fig = Figure(figsize=(4.0 + 3.4 * max_depth, max(3.0, 0.26 * n_rows + 1.2)), layout="constrained")
    ax = fig.subplots()
    _draw_edges(ax, edges, rows, root_row)
    ax.scatter([0], [root_row], s=60, color="black", zorder=2)
    ax.text(-0.06, root_row, f"root  N={total}", fontsize=8, va="center", ha="right", family="monospace")
    _tree_axes(ax, max_depth, n_rows, min_visits)
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
    **planner_options: object,
) -> Figure:
    """How the root visit distribution moves with the number of simulations (at ``c_puct``) and with ``c_puct``
    (at ``num_simulations``), for one real ``history`` ``[1, T]``: two heat maps, the policy prior as the top row.
    ``planner_options``: the other :class:`EmotionMCTS` arguments (an agent's ``root_rule``, ``q_transform``...);
    none: the specification's pUCT search."""
    fig = Figure(figsize=(13, 0.45 * (max(len(simulations), len(c_pucts)) + 1) + 1.8), layout="constrained")
    panels = fig.subplots(1, 2)
    sweeps = (
        (
            [f"{n} sims" for n in simulations],
            [EmotionMCTS(n, c_puct, max_depth, **planner_options) for n in simulations],
        ),
        (
            [f"c_puct {c:g}" for c in c_pucts],
            [EmotionMCTS(num_simulations, c, max_depth, **planner_options) for c in c_pucts],
        ),
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
