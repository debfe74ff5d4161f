"""The emotion model (spec 2.1): a causal transformer over the real history, and four heads per emotion.

Token ``i`` is ``(a_{i-1}, e_{i-1}, r_{i-1}, s_i)`` (decision 13), so one causal pass gives at every ``t`` the
``h_t`` inference computes at step ``t``. An imagined state is the real history plus ONE imagined token
(decision 5): :meth:`EmotionModel.encode` keeps every layer's keys and values, :meth:`EmotionModel.encode_imagined`
runs imagined tokens against them. The planner's fused form of the same computation is in ``mcts/search_model.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from emotion_rl.history import NONE, History

OUTPUT_KEYS = ("policy", "values", "action_logits", "dynamics", "value")

ImaginedAction = Literal["softmax", "one_hot"]
"""The action vector the dynamics heads read when the model imagines a next state in :meth:`EmotionModel.heads`
(the search's children): ``"softmax"`` of the action head (spec 2.1) or ``"one_hot"`` of its argmax."""


class PerEmotionMLP(nn.Module):
    """One small MLP per emotion as stacked weights: ``[..., E, in]`` -> ``[..., E, out]`` in one ``einsum``."""

    def __init__(self, n_emotions: int, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_emotions, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_emotions, hidden))
        self.w2 = nn.Parameter(torch.empty(n_emotions, hidden, out_dim))
        self.b2 = nn.Parameter(torch.zeros(n_emotions, out_dim))
        for w in (self.w1, self.w2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """One input per emotion, ``[..., E, in]`` -> ``[..., E, out]``."""
        hidden = F.gelu(torch.einsum("...ei,eih->...eh", x, self.w1) + self.b1)
        return torch.einsum("...eh,eho->...eo", hidden, self.w2) + self.b2

    def forward_shared(self, x: Tensor) -> Tensor:
        """One input for all emotions, ``[..., in]`` -> ``[..., E, out]``: the first layers of all heads as one
        matrix product, the second as one batched product over emotions."""
        n_emotions, in_dim, hidden_dim = self.w1.shape
        flat = x.reshape(-1, in_dim)
        first = (flat @ self.w1.permute(1, 0, 2).reshape(in_dim, n_emotions * hidden_dim)).view(
            -1, n_emotions, hidden_dim
        )
        hidden = F.gelu(first + self.b1)
        out = torch.bmm(hidden.transpose(0, 1), self.w2).transpose(0, 1) + self.b2
        return out.reshape(*x.shape[:-1], n_emotions, self.w2.shape[-1])

    def forward_selected(self, x: Tensor, emotion: Tensor) -> Tensor:
        """Only emotion ``emotion[...]``'s head: ``[..., in]``, ``[...]`` -> ``[..., out]`` (padding < 0 reads 0).

        Equal to picking from :meth:`forward_shared` at an eighth of the work (inputs grouped by emotion).
        """
        flat_x = x.reshape(-1, x.shape[-1])
        flat_e = emotion.reshape(-1).clamp(min=0)
        order = flat_e.argsort(stable=True)
        counts = torch.bincount(flat_e, minlength=self.w1.shape[0]).tolist()
        groups = flat_x[order].split(counts)
        outputs = [
            F.gelu(group @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]
            for e, group in enumerate(groups)
            if counts[e]
        ]
        out = flat_x.new_empty(flat_x.shape[0], self.w2.shape[-1])
        out = out.index_copy(0, order, torch.cat(outputs)) if outputs else out
        return out.view(*emotion.shape, -1)


class Block(nn.Module):
    """Pre-norm transformer block with causal self-attention; exposes its keys and values for the cache."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values of ``x`` ``[N, T, d]``, each ``[N, H, T, dh]``."""
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def merge(self, x: Tensor, attended: Tensor) -> Tensor:
        """The residual stream after attention output ``attended`` ``[N, H, T, dh]`` and the MLP."""
        n, _, t, _ = attended.shape
        x = x + self.proj(attended.transpose(1, 2).reshape(n, t, -1))
        return x + self.mlp(self.ln2(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Real tokens ``[N, T, d]``, causal. Returns the new stream and this layer's keys and values."""
        q, k, v = self.split(x)
        return self.merge(x, F.scaled_dot_product_attention(q, k, v, is_causal=True)), k, v

    def forward_imagined(self, x: Tensor, keys: Tensor, values: Tensor, visible: Tensor) -> Tensor:
        """Imagined tokens ``[N, Q, d]``, each attending to the real keys ``visible`` ``[N, Q, T]`` and itself only
        (imagined tokens never see each other, decision 5). ``keys``/``values``: ``[N, H, T, dh]``."""
        q, k_self, v_self = self.split(x)
        n, _, q_len, _ = q.shape
        itself = torch.eye(q_len, dtype=torch.bool, device=x.device).expand(n, q_len, q_len)
        mask = torch.cat([visible, itself], dim=-1).unsqueeze(1)  # [N, 1, Q, T + Q]
        keys = torch.cat([keys, k_self], dim=2)
        values = torch.cat([values, v_self], dim=2)
        return self.merge(x, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


@dataclass
class Encoding:
    """A real history encoded once (spec 1.3 step 2), batch flattened to ``N``: hidden states after the final
    norm ``[N, T, d]`` (``None`` where only the keys and values were kept), every layer's keys and values
    ``[N, H, T, dh]``, valid lengths ``[N]`` (right padding) and the original batch shape."""

    hidden: Tensor | None
    keys: list[Tensor]
    values: list[Tensor]
    length: Tensor
    batch_shape: torch.Size

    @property
    def last_hidden(self) -> Tensor:
        """``h_t`` at each row's last valid entry, ``[N, d]``."""
        index = (self.length - 1).view(-1, 1, 1).expand(-1, 1, self.hidden.shape[-1])
        return self.hidden.gather(1, index).squeeze(1)

    def detach(self) -> Encoding:
        """The same encoding cut from the graph (a frozen real prefix)."""
        hidden = None if self.hidden is None else self.hidden.detach()
        keys, values = [k.detach() for k in self.keys], [v.detach() for v in self.values]
        return Encoding(hidden, keys, values, self.length, self.batch_shape)


class EmotionModel(nn.Module):
    """Causal transformer with four outputs per emotion (spec 2.1): policy, value, action logits, dynamics.

    Args:
        obs_dim, n_actions: read from the environment (decision 12).
        n_emotions: size of the emotion set (spec 1.2: 8).
        d_model, n_layers, n_heads: transformer size; head_hidden: per-emotion head width (default d_model).
        context_window: ``K``, the most real steps a history may hold (decision 15); the position table has
            ``K + 1`` rows, the extra one for the imagined state.
        imagined_action: the action vector behind the ``dynamics`` output of :meth:`heads` (:data:`ImaginedAction`):
            ``"softmax"`` (spec 2.1) or ``"one_hot"`` of the head's argmax, the form phase 1 learns from when it
            feeds the taken action (beyond the specification; docs/search.md).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        n_emotions: int = 8,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        head_hidden: int | None = None,
        context_window: int = 511,
        imagined_action: ImaginedAction = "softmax",
    ) -> None:
        super().__init__()
        if imagined_action not in ImaginedAction.__args__:
            raise ValueError(
                f"imagined_action={imagined_action!r} is not supported; choose one of {list(ImaginedAction.__args__)}"
            )
        self.imagined_action = imagined_action
        sizes = dict(obs_dim=obs_dim, n_actions=n_actions, n_emotions=n_emotions, d_model=d_model)
        sizes.update(n_layers=n_layers, n_heads=n_heads, context_window=context_window)
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"EmotionModel: {name} must be >= 1, got {value}")
        self.obs_dim, self.n_actions, self.n_emotions = obs_dim, n_actions, n_emotions
        self.context_window = context_window
        head_hidden = head_hidden or d_model
        # the shared transformer (every optimizer updates it, spec 3.2)
        self.obs_embed = nn.Linear(obs_dim, d_model)
        self.action_embed = nn.Embedding(n_actions + 1, d_model)  # index 0 = NONE
        self.emotion_embed = nn.Embedding(n_emotions + 1, d_model)  # index 0 = NONE
        self.reward_embed = nn.Linear(1, d_model)
        self.position_embed = nn.Embedding(context_window + 1, d_model)  # + the imagined state's slot
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        # the four heads (spec 2.1)
        self.policy_head = nn.Linear(d_model, n_emotions)
        self.value_heads = PerEmotionMLP(n_emotions, d_model, head_hidden, 1)
        self.action_heads = PerEmotionMLP(n_emotions, d_model, head_hidden, n_actions)
        self.dynamics_heads = PerEmotionMLP(n_emotions, d_model + n_actions, head_hidden, obs_dim)

    # ------------------------------------------------------------------ parameter groups (spec 3.2)
    def transformer_parameters(self) -> list[nn.Parameter]:
        """The shared history encoder: embeddings, blocks and final norm."""
        modules = [self.obs_embed, self.action_embed, self.emotion_embed, self.reward_embed]
        modules += [self.position_embed, self.blocks, self.final_norm]
        return [p for m in modules for p in m.parameters()]

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each phase's head group (spec 3.2): dynamics, action, value, policy."""
        return {
            "dynamics": list(self.dynamics_heads.parameters()),
            "action": list(self.action_heads.parameters()),
            "value": list(self.value_heads.parameters()),
            "policy": list(self.policy_head.parameters()),
        }

    # ------------------------------------------------------------------ tokens
    def embed(self, observation: Tensor, prev_action: Tensor, prev_emotion: Tensor, prev_reward: Tensor) -> Tensor:
        """Token ``(a_{i-1}, e_{i-1}, r_{i-1}, s_i)`` embedding, without position."""
        return (
            self.obs_embed(observation)
            + self.action_embed(prev_action + 1)
            + self.emotion_embed(prev_emotion + 1)
            + self.reward_embed(prev_reward.unsqueeze(-1))
        )

    def tokens(self, history: History | TensorDictBase) -> tuple[Tensor, Tensor, torch.Size]:
        """Embedded real tokens with positions ``[N, T, d]``, valid lengths ``[N]`` and the batch shape."""
        if not isinstance(history, History):
            history = History.of(history)
        t = history.batch_size[-1] if history.batch_dims else 0
        if history.batch_dims < 1 or t < 1:
            raise ValueError(f"history needs batch size [*B, T] with T >= 1, got {tuple(history.batch_size)}")
        if t > self.context_window:
            raise ValueError(
                f"history of {t} steps does not fit the model's context_window={self.context_window} (real steps; "
                f"the imagined state has its own slot). Raise context_window to at least {t} or keep a shorter history."
            )
        if history.observation.shape[-1] != self.obs_dim:
            raise ValueError(
                f"observation has size {history.observation.shape[-1]}, the model was built for obs_dim={self.obs_dim}"
            )
        batch_shape = history.batch_size[:-1]
        flat = history.reshape(-1, t)
        obs = flat.observation
        action, emotion = flat.action.long(), flat.emotion.long()
        reward = flat.reward.to(obs.dtype)
        none = torch.full_like(action[:, :1], NONE)
        prev_action = torch.cat([none, action[:, :-1]], dim=1)
        prev_emotion = torch.cat([none, emotion[:, :-1]], dim=1)
        prev_reward = torch.cat([torch.zeros_like(reward[:, :1]), reward[:, :-1]], dim=1)
        positions = torch.arange(t, device=obs.device)
        x = self.embed(obs, prev_action, prev_emotion, prev_reward) + self.position_embed(positions)
        return x, flat.lengths(), batch_shape

    # ------------------------------------------------------------------ the transformer
    def encode(self, history: History | TensorDictBase) -> Encoding:
        """Encode the real history once (spec 1.3 step 2), keeping every layer's keys and values.

        ``history``: ``[*B, T]`` (a :class:`History` or any TensorDict with its keys; ``mask`` = valid prefix).
        """
        x, length, batch_shape = self.tokens(history)
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x)
            keys.append(k)
            values.append(v)
        return Encoding(self.final_norm(x), keys, values, length, batch_shape)

    def encode_imagined(
        self,
        encoding: Encoding,
        imagined_observation: Tensor,
        positions: Tensor,
        visible: Tensor,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Hidden states ``[N, Q, d]`` of imagined tokens ``(NONE, NONE, 0.0, s)`` (spec 1.5) on a real prefix.

        ``imagined_observation`` ``[N, Q, obs_dim]``; ``positions`` ``[N, Q]`` (one past the prefix each extends);
        ``visible`` ``[N, Q, T]`` real tokens each one sees; ``rows`` ``[N]`` rows of ``encoding`` (default all).
        """
        n, q = imagined_observation.shape[:2]
        none = torch.full((n, q), NONE, dtype=torch.long, device=imagined_observation.device)
        x = self.embed(imagined_observation, none, none, torch.zeros_like(none, dtype=imagined_observation.dtype))
        x = x + self.position_embed(positions)
        for block, k, v in zip(self.blocks, encoding.keys, encoding.values, strict=True):
            if rows is not None:
                k, v = k[rows], v[rows]
            x = block.forward_imagined(x, k, v, visible)
        return self.final_norm(x)

    # ------------------------------------------------------------------ heads (spec 2.1)
    def policy_logits(self, hidden: Tensor) -> Tensor:
        """Policy head: emotion logits ``[..., E]``."""
        return self.policy_head(hidden)

    def emotion_values(self, hidden: Tensor, emotion: Tensor | None = None) -> Tensor:
        """Value heads: ``V^e(s)`` for every emotion, ``[..., E]``; with ``emotion`` ``[...]``, that one, ``[...]``."""
        if emotion is not None:
            return self.value_heads.forward_selected(hidden, emotion).squeeze(-1)
        return self.value_heads.forward_shared(hidden).squeeze(-1)

    def state_value(self, values: Tensor) -> Tensor:
        """The value of a state ``[...]`` from its ``E`` values ``V^e(s)`` ``[..., E]``: their mean, spec 1.4's leaf
        value. The one readout of "the value of a state": the search's leaves (the ``value`` output of
        :meth:`heads`), phase 2's critic, phase 3's row-end imagined target."""
        return values.mean(dim=-1)

    def action_logits(self, hidden: Tensor, emotion: Tensor | None = None) -> Tensor:
        """Action heads: ``A^e(s)`` for every emotion, ``[..., E, n_actions]``; with ``emotion``, that one's."""
        if emotion is not None:
            return self.action_heads.forward_selected(hidden, emotion)
        return self.action_heads.forward_shared(hidden)

    def dynamics(self, hidden: Tensor, action: Tensor, emotion: Tensor | None = None) -> Tensor:
        """Dynamics heads ``Z^e(h, a) = f_e(concat(h, a))`` (spec 2.5), ``[..., E, obs_dim]``.

        ``action`` ``[..., E, n_actions]``: per emotion an action vector (softmax of the action head, or one-hot of
        the taken action); gradients flow to it. With ``emotion`` ``[...]``: that head only, on ``[..., n_actions]``.
        """
        if emotion is not None:
            return self.dynamics_heads.forward_selected(torch.cat([hidden, action], dim=-1), emotion)
        hidden = hidden.unsqueeze(-2).expand(*action.shape[:-1], hidden.shape[-1])
        return self.dynamics_heads(torch.cat([hidden, action], dim=-1))

    def imagined_action_vector(self, action_logits: Tensor) -> Tensor:
        """The action vector ``[..., A]`` the dynamics heads read when imagining (``imagined_action``)."""
        if self.imagined_action == "one_hot":
            return F.one_hot(action_logits.argmax(-1), action_logits.shape[-1]).to(action_logits.dtype)
        return torch.softmax(action_logits, dim=-1)

    def heads(self, hidden: Tensor) -> TensorDict:
        """The four outputs of spec 2.1 from ``h``, every emotion: ``policy`` (probabilities), ``values``,
        ``action_logits``, ``dynamics`` (at :meth:`imagined_action_vector` of each head); and ``value``, the state's
        value (:meth:`state_value`: the mean of the ``E`` values, spec 1.4), what the search backs up."""
        action_logits = self.action_logits(hidden)
        policy, values = torch.softmax(self.policy_logits(hidden), dim=-1), self.emotion_values(hidden)
        return TensorDict(
            policy=policy,
            values=values,
            action_logits=action_logits,
            dynamics=self.dynamics(hidden, self.imagined_action_vector(action_logits)),
            value=self.state_value(values),
            batch_size=hidden.shape[:-1],
        )

    # ------------------------------------------------------------------ entry points
    def evaluate_imagined(self, encoding: Encoding, imagined_observation: Tensor, rows: Tensor) -> TensorDict:
        """Outputs ``[N]`` at "real history of row ``rows[n]`` + imagined state ``imagined_observation[n]``"
        (spec 1.4 expansion); ``imagined_observation`` ``[N, obs_dim]``."""
        length = encoding.length[rows]
        t = encoding.keys[0].shape[2]
        visible = torch.arange(t, device=length.device) < length.unsqueeze(-1)
        hidden = self.encode_imagined(
            encoding, imagined_observation.unsqueeze(1), length.unsqueeze(1), visible.unsqueeze(1), rows=rows
        )
        return self.heads(hidden.squeeze(1))

    def evaluate(self, history: History | TensorDictBase, imagined_observation: Tensor | None = None) -> TensorDict:
        """The four outputs ``[*B]`` at the last valid step of ``history`` ``[*B, T]`` (spec 2.1), or, with
        ``imagined_observation`` ``[*B, obs_dim]``, at ``history + [NONE, NONE, 0.0, imagined state]`` (spec 1.5).

        Keys: ``policy`` ``[*B, E]`` (probabilities), ``values`` ``[*B, E]``, ``action_logits`` ``[*B, E, A]``,
        ``dynamics`` ``[*B, E, obs_dim]``, ``value`` ``[*B]`` (the state's value, :meth:`heads`). The last valid
        entry's action, emotion and reward are never read.
        """
        encoding = self.encode(history)
        if imagined_observation is None:
            out = self.heads(encoding.last_hidden)
        else:
            rows = torch.arange(encoding.hidden.shape[0], device=encoding.hidden.device)
            out = self.evaluate_imagined(encoding, imagined_observation.reshape(-1, self.obs_dim), rows)
        return out.reshape(encoding.batch_shape)


def parameter_device_dtype(module: nn.Module, fallback: Tensor | None = None) -> tuple[torch.device, torch.dtype]:
    """The device and floating type of ``module``'s first floating parameter (``fallback``'s device and floating
    type, or the default dtype, when it has none): where inputs must go before the module reads them."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    if fallback is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return fallback.device, fallback.dtype if fallback.is_floating_point() else torch.get_default_dtype()


@contextmanager
def evaluating(module: nn.Module, fallback: Tensor | None = None) -> Iterator[tuple[torch.device, torch.dtype]]:
    """``with evaluating(model) as (device, dtype):`` the module in eval mode without gradients, its training mode
    restored on exit (also on an error); yields :func:`parameter_device_dtype`. Acting, reanalyze and the plots read
    the model this way: dropout off, nothing recorded for backward."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield parameter_device_dtype(module, fallback)
    finally:
        module.train(was_training)
