"""Batch- and cache-invariant attention for `LocalModel`: a reply's numbers do not depend on
its batch-mates, on how its prompt was split into prefill passes, or on what the prefix cache
held (issue 24, item 1).

Why the stock path varies: the fused attention kernel blocks its reductions by the shapes of
the whole pass (the query chunk, the padded key length, the batch), and bf16 GEMMs of more
than 32 rows use kernels that round some rows differently from a single row; so a token's
keys and values differ with the split and the batch that computed them. (fp32 is no cure on
this CPU: an fp32 linear layer's row differs between 1 and 2+ rows.)

What this attention does instead, row by row of the pass: the row's new keys and values go
into its own KV cache (`PrefixEntry.cache`, no shared padded batch cache), and the queries at
absolute positions p of one block of B positions attend, in one call of torch's fused
attention (at most B queries, grouped-query heads as they are), over exactly the key columns
[0, B * (p // B + 1)) of the row, masked past each query (columns the row does not hold yet
are zeros or cropped keys of the buffer, never read unmasked): the same call with the same
shapes for every token, whatever else runs in the pass, whatever was cached. Every linear
layer computes at most 32 rows per matmul (`piecewise_linears`): above that, the CPU's bf16
GEMM switches kernels and rounds some rows differently (a 256-token prefill chunk against the
same tokens one by one: 6-26 rows of 256 differ per projection). So a reply is the same bit
for bit alone, in any batch, after any cache history and in a fresh process - on the same
machine, thread count and library versions (kernels may differ elsewhere). Checked on this
CPU by `tests/agent_core/test_invariance.py`; the fused attention's own invariance for a
fixed key length is measured, not guaranteed by its documentation.

A pass is described to the attention through a thread-local (`rows_pass`): transformers calls
the attention once per layer with the batch's query/key/value tensors, and the rows' caches
and widths are not among its arguments.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the attention implementation's name in transformers' registry
ATTENTION = "automem-invariant"
#: key columns are taken in blocks of this many absolute positions (the queries of one block
#: share an attention call)
BLOCK = 32
#: the most rows one bf16 matmul computes (see `_PiecewiseLinear`)
PIECE = 32

_PASS = threading.local()
_REGISTERED = False


@contextmanager
def rows_pass(rows: list[tuple[Any, int]]) -> Iterator[None]:
    """Within the block, a forward pass of the model decodes `rows`: (its KV cache, how many
    tokens it feeds; left-padded to the pass's width), in batch order."""
    _PASS.rows = rows
    try:
        yield
    finally:
        _PASS.rows = None


def register() -> str:
    """Register the attention with transformers (once); its name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, invariant_attention)
        _REGISTERED = True
    return ATTENTION


def invariant_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                        scaling: float, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention interface: query [b, heads, w, d], key/value [b, kv_heads, w, d]
    of the pass's new tokens (rotary applied); returns [b, w, heads, d] (pads: zeros)."""
    import torch

    rows = getattr(_PASS, "rows", None)
    if rows is None or len(rows) != query.shape[0]:
        raise RuntimeError("invariant attention called outside `rows_pass` (or with other rows)")
    batch, heads, width, dim = query.shape
    out = query.new_zeros((batch, width, heads, dim))
    for i, (cache, fed) in enumerate(rows):
        pad = width - fed
        layer = cache.layers[module.layer_idx]
        n = layer.get_seq_length() + fed
        # the row's keys in a buffer reaching the end of its last block: columns past its
        # tokens hold zeros or cropped keys (finite), always masked, so no copy is needed
        layer.update(key[i:i + 1, :, pad:], value[i:i + 1, :, pad:], reserve=-(-n // BLOCK) * BLOCK)
        keys, values = layer._kbuf[0], layer._vbuf[0]  # [kv_heads, room, d]
        queries = query[i, :, pad:]  # [heads, fed, d]
        first = n - fed  # absolute position of the row's first query
        p0 = first
        while p0 < n:
            end = (p0 // BLOCK + 1) * BLOCK  # the block's key length, whatever the row holds now
            p1 = min(end, n)
            visible = torch.arange(end, device=query.device)[None, :] <= \
                torch.arange(p0, p1, device=query.device)[:, None]  # [m, end]: up to the query
            o = torch.nn.functional.scaled_dot_product_attention(
                queries[None, :, p0 - first:p1 - first], keys[None, :, :end], values[None, :, :end],
                attn_mask=visible[None, None], scale=scaling, enable_gqa=True)[0]  # [heads, p1 - p0, d]
            out[i, pad + p0 - first:pad + p1 - first] = o.transpose(0, 1)
            p0 = p1
    return out, None


class _PiecewiseLinear:
    """`forward` of a `torch.nn.Linear` whose input rows go through the matmul at most `PIECE`
    at a time: CPU bf16 GEMM kernels give each row the same bits for up to 32 rows (measured
    for every row and every projection shape of the model), while larger calls switch to
    kernels that round some rows differently."""

    def forward(self: Any, x: Any) -> Any:
        import torch
        from torch.nn.functional import linear

        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= PIECE:
            out = linear(flat, self.weight, self.bias)
        else:
            out = torch.cat([linear(flat[i:i + PIECE], self.weight, self.bias)
                             for i in range(0, flat.shape[0], PIECE)])
        return out.view(*x.shape[:-1], out.shape[-1])


_PIECEWISE: dict[type, type] = {}


def piecewise_linears(model: Any) -> None:
    """Every plain `nn.Linear` of `model` (base projections, LoRA A/B, the head) computes at
    most `PIECE` rows per matmul (`_PiecewiseLinear`); in place, idempotent."""
    from torch import nn

    for module in model.modules():
        if type(module) is nn.Linear:
            cls = _PIECEWISE.get(nn.Linear)
            if cls is None:
                cls = _PIECEWISE[nn.Linear] = type("PiecewiseLinear", (_PiecewiseLinear, nn.Linear), {})
            module.__class__ = cls
