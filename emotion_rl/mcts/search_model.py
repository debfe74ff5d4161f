"""The planner's view of an :class:`EmotionModel`: the :class:`~emotion_rl.mcts.tree.SearchModel` protocol, two ways.

:class:`FusedSearchModel` (the default, :func:`as_search_model`) encodes the history once per search, keeps the
keys and values in a layout for batched matrix products and runs each expansion as one imagined token through
pre-arranged weights (the four heads fused into a few products). :class:`PlainSearchModel` does the same through
the model's public methods; the two agree up to float rounding (tested). docs/search.md has the cost model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import Tensor

from emotion_rl.history import History
from emotion_rl.mcts.tree import Expansion, SearchModel
from emotion_rl.model import EmotionModel, Encoding

__all__ = ["ExpansionCache", "FusedSearchModel", "PlainSearchModel", "as_search_model"]


class LayerWeights(NamedTuple):
    """One block's weights as plain tensors; ``qkv`` rows ordered (head, q/k/v, dh)."""

    ln1: tuple[Tensor, Tensor, float]
    qkv_weight: Tensor  # [3d, d]
    qkv_bias: Tensor  # [3d]
    proj_weight: Tensor
    proj_bias: Tensor
    ln2: tuple[Tensor, Tensor, float]
    fc1_weight: Tensor
    fc1_bias: Tensor
    fc2_weight: Tensor
    fc2_bias: Tensor


@dataclass
class ExpansionCache:
    """What every expansion of one search shares (spec 1.4, 1.5; decision 5), built once per search.

    ``kv`` has one spare slot ``T`` per row for the imagined token's own key and value, so one batched product
    attends to ``[real ; own]``. Weights are copies rearranged per search (so the cache follows training): the
    first layers of all heads in one matrix, every per-emotion second layer as one block-diagonal matrix.
    Inference only: an expansion writes into the spare slot.
    """

    kv: Tensor  # [L, 2, N, H, T + 1, dh] real keys/values; slot T is scratch for the imagined token's own
    length: Tensor  # [N] valid real steps per row
    token_bias: Tensor  # [N, d] embedding of (none, none, 0.0, .) + position + obs_embed bias
    obs_weight: Tensor  # [obs_dim, d] obs_embed.weight transposed
    layers: list[LayerWeights]
    final_norm: tuple[Tensor, Tensor, float]
    head_weight: Tensor  # [d, E + E * 3 * hidden]: policy | per emotion (value, action) hidden | dynamics h-part
    head_bias: Tensor  # [E + E * 3 * hidden]
    va_weight: Tensor  # [E * 2 * hidden, E * (1 + n_actions)] block-diagonal second layers of value and action
    va_bias: Tensor  # [E * (1 + n_actions)]
    dyn_action_weight: Tensor  # [E * n_actions, E * hidden] block-diagonal action part of the dynamics' first layer
    dyn_weight: Tensor  # [E * hidden, E * obs_dim] block-diagonal second layers of the dynamics heads
    dyn_bias: Tensor  # [E * obs_dim]
    attention: list[tuple[Tensor, Tensor, Tensor]]  # per layer, every row: spare slots [2, N, H, dh], keys^T, values
    mask: Tensor  # [N * H, 1, T + 1] additive: 0 where visible (valid real prefix and slot T), -inf elsewhere

    @property
    def encoding(self) -> Encoding:
        """The real keys and values as an :class:`Encoding` without hidden states (for the general path)."""
        t = self.kv.shape[4] - 1
        keys = [kv[0, :, :, :t] for kv in self.kv]
        values = [kv[1, :, :, :t] for kv in self.kv]
        return Encoding(None, keys, values, self.length, torch.Size([self.length.shape[0]]))


def expansion_cache(model: EmotionModel, kv: Tensor, length: Tensor) -> ExpansionCache:
    """The cache around a key/value array ``[L, 2, N, H, T + 1, dh]`` whose first ``T`` slots are filled."""
    n_heads, dh = kv.shape[3], kv.shape[5]
    mask, attention = attention_layout(kv, length)
    none = model.action_embed.weight[0] + model.emotion_embed.weight[0] + model.reward_embed.bias
    heads = head_weights(model, n_heads * dh, kv.device)
    return ExpansionCache(
        kv=kv,
        length=length,
        token_bias=model.position_embed(length) + (none + model.obs_embed.bias),
        obs_weight=model.obs_embed.weight.t(),
        layers=[layer_weights(block, n_heads, dh) for block in model.blocks],
        final_norm=(model.final_norm.weight, model.final_norm.bias, model.final_norm.eps),
        **heads,
        attention=attention,
        mask=mask,
    )


def attention_layout(kv: Tensor, length: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
    """The imagined token's attention over ``kv`` ``[L, 2, N, H, T + 1, dh]``: the additive ``mask``
    ``[N * H, 1, T + 1]`` (the valid real prefix and the spare slot ``T``, which is zeroed) and, per layer, views of
    the spare slots ``[2, N, H, dh]``, the keys transposed and the values, one row per (row, head)."""
    n_layers, _, n, n_heads, t1, dh = kv.shape
    t = t1 - 1
    kv[:, :, :, :, t] = 0.0
    visible = torch.arange(t + 1, device=kv.device) < length.unsqueeze(-1)
    visible[:, t] = True  # the imagined token sees itself
    mask = torch.zeros(n, 1, 1, t + 1, dtype=kv.dtype, device=kv.device)
    mask.masked_fill_(~visible.view(n, 1, 1, t + 1), float("-inf"))
    mask = mask.expand(n, n_heads, 1, t + 1).reshape(n * n_heads, 1, t + 1)
    slots = kv.select(4, t)
    flat_kv = kv.view(n_layers, 2, n * n_heads, t1, dh)
    return mask, [(slots[i], flat_kv[i, 0].transpose(1, 2), flat_kv[i, 1]) for i in range(n_layers)]


def layer_weights(block: torch.nn.Module, n_heads: int, dh: int) -> LayerWeights:
    """One transformer block's weights as plain tensors, the ``qkv`` rows reordered to (head, q/k/v, dh)."""
    d = n_heads * dh
    fc1, _, fc2 = block.mlp
    qkv_weight = block.qkv.weight.view(3, n_heads, dh, d).transpose(0, 1).reshape(3 * d, d)
    qkv_bias = block.qkv.bias.view(3, n_heads, dh).transpose(0, 1).reshape(3 * d)
    ln1 = (block.ln1.weight, block.ln1.bias, block.ln1.eps)
    ln2 = (block.ln2.weight, block.ln2.bias, block.ln2.eps)
    proj = (block.proj.weight, block.proj.bias)
    return LayerWeights(ln1, qkv_weight, qkv_bias, *proj, ln2, fc1.weight, fc1.bias, fc2.weight, fc2.bias)


def head_weights(model: EmotionModel, d: int, device: torch.device) -> dict[str, Tensor]:
    """The four heads as :class:`ExpansionCache` reads them: every first layer that reads ``h`` in one matrix
    (``head_weight``, ``head_bias``), the per-emotion second layers of value and action and the dynamics' action
    part and second layer as block-diagonal matrices (one product for all eight emotions); ``d``: the width of ``h``."""
    e, n_actions = model.n_emotions, model.n_actions
    value, action, dyn = model.value_heads, model.action_heads, model.dynamics_heads
    hidden = value.w1.shape[-1]
    va_first = torch.stack([value.w1, action.w1], dim=1)  # [E, 2, d, hidden]
    head_weight = torch.cat(
        [
            model.policy_head.weight.t(),
            va_first.permute(2, 0, 1, 3).reshape(d, e * 2 * hidden),
            dyn.w1[:, :d].permute(1, 0, 2).reshape(d, e * hidden),
        ],
        dim=1,
    )
    head_bias = torch.cat(
        [model.policy_head.bias, torch.stack([value.b1, action.b1], dim=1).reshape(-1), dyn.b1.reshape(-1)]
    )
    va_weight = value.w2.new_zeros(e, 2 * hidden, e, 1 + n_actions)
    dyn_action_weight = dyn.w1.new_zeros(e, n_actions, e, hidden)
    dyn_weight = dyn.w2.new_zeros(e, hidden, e, model.obs_dim)
    diagonal = torch.arange(e, device=device)  # block (i, i) of each block-diagonal matrix
    va_weight[diagonal, :hidden, diagonal, :1] = value.w2
    va_weight[diagonal, hidden:, diagonal, 1:] = action.w2
    dyn_action_weight[diagonal, :, diagonal] = dyn.w1[:, d:]
    dyn_weight[diagonal, :, diagonal] = dyn.w2
    return dict(
        head_weight=head_weight.contiguous(),
        head_bias=head_bias,
        va_weight=va_weight.view(e * 2 * hidden, -1),
        va_bias=torch.cat([value.b2, action.b2], dim=-1).reshape(-1),
        dyn_action_weight=dyn_action_weight.view(e * n_actions, -1),
        dyn_weight=dyn_weight.view(e * hidden, -1),
        dyn_bias=dyn.b2.reshape(-1),
    )


def encoding_cache(model: EmotionModel, encoding: Encoding) -> ExpansionCache:
    """The cache of an :meth:`EmotionModel.encode` result (the slow way to build it; tests compare the two)."""
    n, t, d = encoding.hidden.shape
    n_heads = model.blocks[0].n_heads
    kv = encoding.hidden.new_empty(len(model.blocks), 2, n, n_heads, t + 1, d // n_heads)
    for layer, (k, v) in enumerate(zip(encoding.keys, encoding.values, strict=True)):
        kv[layer, 0, :, :, :t] = k
        kv[layer, 1, :, :, :t] = v
    return expansion_cache(model, kv, encoding.length)


class FusedSearchModel:
    """The fused fast path of an :class:`EmotionModel` for the planner (:class:`~emotion_rl.mcts.tree.SearchModel`)."""

    def __init__(self, model: EmotionModel) -> None:
        self.model = model

    def search_prefix(self, history: History | TensorDictBase) -> tuple[Tensor, ExpansionCache]:
        """``h_t`` ``[N, d]`` and the expansion cache: :meth:`EmotionModel.encode` then :func:`encoding_cache`
        (equal up to rounding, tested), except that the last block runs at each row's last valid step only and
        the keys and values are written straight into the cache."""
        model = self.model
        x, length, _ = model.tokens(history)
        n, t, d = x.shape
        n_heads = model.blocks[0].n_heads
        kv = x.new_empty(len(model.blocks), 2, n, n_heads, t + 1, d // n_heads)
        rows, last = torch.arange(n, device=x.device), length - 1
        for layer, block in enumerate(model.blocks):
            q, k, v = block.split(x)
            kv[layer, 0, :, :, :t] = k
            kv[layer, 1, :, :, :t] = v
            if layer + 1 < len(model.blocks):
                x = block.merge(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
            else:  # only h_t is read: the last valid step's query
                visible = (torch.arange(t, device=x.device) < length.unsqueeze(-1)).view(n, 1, 1, t)
                attended = F.scaled_dot_product_attention(q[rows, :, last].unsqueeze(2), k, v, attn_mask=visible)
                x = block.merge(x[rows, last].unsqueeze(1), attended)
        return model.final_norm(x[:, 0]), expansion_cache(model, kv, length)

    def root(self, history: History | TensorDictBase) -> tuple[Expansion, ExpansionCache]:
        """The root's outputs ``[N, ...]`` (spec 1.3 step 2) and the cache every expansion reads."""
        hidden, cache = self.search_prefix(history)
        out = self.model.heads(hidden)
        return Expansion(out["policy"], out["values"], out["action_logits"], out["dynamics"], out["value"]), cache

    def expand(self, cache: ExpansionCache, observation: Tensor) -> Expansion:
        """Outputs ``[N, ...]`` at "real history of row ``n`` + imagined state ``observation[n]``" (spec 1.4, 1.5)
        for every row, in about 40 tensor operations: per layer one product for q, k, v, the token's own k, v
        written into the spare slot, one masked product over ``[real ; own]``; then the heads in four products."""
        attention, mask, x = cache.attention, cache.mask, cache.token_bias
        n_heads, dh = cache.kv.shape[3], cache.kv.shape[5]
        n, d = x.shape
        scale = 1.0 / math.sqrt(dh)
        x = torch.addmm(x, observation, cache.obs_weight)
        for w, (slot, keys_t, values) in zip(cache.layers, attention, strict=True):
            ln_weight, ln_bias, eps = w.ln1
            qkv = F.linear(torch.layer_norm(x, (d,), ln_weight, ln_bias, eps), w.qkv_weight, w.qkv_bias)
            slot.copy_(qkv.view(n, n_heads, 3, dh).narrow(2, 1, 2).permute(2, 0, 1, 3))
            scores = torch.baddbmm(mask, qkv.view(n * n_heads, 3, dh).narrow(1, 0, 1), keys_t, alpha=scale)
            attended = torch.bmm(torch.softmax(scores, dim=-1), values).view(n, d)
            x = x + F.linear(attended, w.proj_weight, w.proj_bias)
            ln_weight, ln_bias, eps = w.ln2
            y = F.gelu(F.linear(torch.layer_norm(x, (d,), ln_weight, ln_bias, eps), w.fc1_weight, w.fc1_bias))
            x = x + F.linear(y, w.fc2_weight, w.fc2_bias)
        ln_weight, ln_bias, eps = cache.final_norm
        h = torch.layer_norm(x, (d,), ln_weight, ln_bias, eps)
        e, n_actions = self.model.n_emotions, self.model.n_actions
        width = cache.va_weight.shape[0]
        first = torch.addmm(cache.head_bias, h, cache.head_weight)  # [n, E + E * 3 * hidden]
        va = torch.addmm(cache.va_bias, F.gelu(first.narrow(1, e, width)), cache.va_weight).view(n, e, -1)
        values, action_logits = va.select(2, 0), va.narrow(2, 1, n_actions)
        action_probs = self.model.imagined_action_vector(action_logits).reshape(n, -1)  # [n, E * n_actions]
        dyn_first = first.narrow(1, e + width, first.shape[1] - e - width)
        dyn_hidden = F.gelu(torch.addmm(dyn_first, action_probs, cache.dyn_action_weight))
        dynamics = torch.addmm(cache.dyn_bias, dyn_hidden, cache.dyn_weight).view(n, e, -1)
        policy = torch.softmax(first.narrow(1, 0, e), dim=-1)
        return Expansion(policy, values, action_logits, dynamics, self.model.state_value(values))

    def children(self, cache: ExpansionCache, observation: Tensor) -> Expansion:
        """Outputs ``[N, Q, ...]`` for ``Q`` imagined states per row, each on its own (decision 5): the root's
        children in one call, through the model's general imagined stream."""
        n, q = observation.shape[:2]
        t = cache.kv.shape[4] - 1
        positions = cache.length.unsqueeze(1).expand(n, q)
        visible = (torch.arange(t, device=observation.device) < cache.length.unsqueeze(-1)).unsqueeze(1).expand(n, q, t)
        out = self.model.heads(self.model.encode_imagined(cache.encoding, observation, positions, visible))
        return Expansion(out["policy"], out["values"], out["action_logits"], out["dynamics"], out["value"])


class PlainSearchModel:
    """The protocol through :meth:`EmotionModel.encode` and :meth:`EmotionModel.evaluate_imagined` only."""

    def __init__(self, model: EmotionModel) -> None:
        self.model = model

    def root(self, history: History | TensorDictBase) -> tuple[Expansion, Encoding]:
        encoding = self.model.encode(history)
        out = self.model.heads(encoding.last_hidden)
        return Expansion(out["policy"], out["values"], out["action_logits"], out["dynamics"], out["value"]), encoding

    def expand(self, encoding: Encoding, observation: Tensor) -> Expansion:
        rows = torch.arange(observation.shape[0], device=observation.device)
        out = self.model.evaluate_imagined(encoding, observation, rows)
        return Expansion(out["policy"], out["values"], out["action_logits"], out["dynamics"], out["value"])

    def children(self, encoding: Encoding, observation: Tensor) -> Expansion:
        per_child = [self.expand(encoding, observation[:, q]) for q in range(observation.shape[1])]
        return Expansion(*(torch.stack(parts, dim=1) for parts in zip(*per_child, strict=True)))


def as_search_model(model: EmotionModel | SearchModel) -> SearchModel:
    """``model`` itself when it speaks the protocol, else the fused path of an :class:`EmotionModel`."""
    return FusedSearchModel(model) if isinstance(model, EmotionModel) else model
