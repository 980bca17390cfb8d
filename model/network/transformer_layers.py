"""The layers of Mask2Former's masked-attention transformer decoder (post-norm, dropout 0).

The attention modules keep nn.MultiheadAttention's parameter layout (packed q/k/v `in_proj_weight`
and `in_proj_bias`, rows q, k, v; `out_proj`), but expose key/value projection separately: the memory
of a layer is projected once and shared by every query group, while each group attends on its own.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters, batch-first tensors."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def project_kv(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """key, value [B,S,D] -> per-head projections [B,H,S,Dh]."""
        _, w_k, w_v = self.in_proj_weight.chunk(3)
        _, b_k, b_v = self.in_proj_bias.chunk(3)
        return self._heads(F.linear(key, w_k, b_k)), self._heads(F.linear(value, w_v, b_v))

    def attend(self, query: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], blocked=None) -> torch.Tensor:
        """query [B,Q,D]; blocked: bool [B,Q,S] (True = may not attend) or None. Returns [B,Q,D]."""
        w_q = self.in_proj_weight.chunk(3)[0]
        b_q = self.in_proj_bias.chunk(3)[0]
        q = self._heads(F.linear(query, w_q, b_q))
        allowed = None if blocked is None else ~blocked[:, None]
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).flatten(2))


    def self_attend(self, query_key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Self-attention with q and k from the same input, projected in one matmul."""
        dim = query_key.shape[-1]
        q, k = F.linear(query_key, self.in_proj_weight[: 2 * dim], self.in_proj_bias[: 2 * dim]).chunk(2, dim=-1)
        v = F.linear(value, self.in_proj_weight[2 * dim :], self.in_proj_bias[2 * dim :])
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttentionLayer(nn.Module):
    """tgt = LN(tgt + Attn(q = tgt + query_pos, k = memory + pos, v = memory, mask))."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)

    def project_memory(self, memory: torch.Tensor, pos: torch.Tensor):
        return self.attn.project_kv(memory + pos, memory)

    def forward(self, tgt, memory_kv, query_pos, blocked):
        return self.norm(tgt + self.attn.attend(tgt + query_pos, memory_kv, blocked))


class SelfAttentionLayer(nn.Module):
    """tgt = LN(tgt + Attn(q = k = tgt + query_pos, v = tgt)), within one query group."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, query_pos):
        return self.norm(tgt + self.attn.self_attend(tgt + query_pos, tgt))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, tgt):
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class DecoderLayer(nn.Module):
    """Cross-attention, then self-attention, then FFN (Mask2Former's order)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.cross_attn = CrossAttentionLayer(dim, num_heads)
        self.self_attn = SelfAttentionLayer(dim, num_heads)
        self.ffn = FFNLayer(dim, ffn_dim)

    def forward(self, tgt, memory_kv, query_pos, blocked):
        tgt = self.cross_attn(tgt, memory_kv, query_pos, blocked)
        tgt = self.self_attn(tgt, query_pos)
        return self.ffn(tgt)


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (Mask2Former's mask and class MLPs)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
