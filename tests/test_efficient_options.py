"""lib.efficient: the defaults of tiled attention, and 16-bit inputs accumulated in float32 over many blocks.

A 16-bit running sum over hundreds of key blocks would lose the small terms (bfloat16 keeps 8 bits):
the state is float32 whatever the inputs, and only the output is cast back. Compared with the same
16-bit inputs attended in float64, the error is one final rounding.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from lib.efficient import (
    online_softmax_finish,
    online_softmax_init,
    online_softmax_update,
    tiled_attention,
)

EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _reference(q, k, v, causal=False):
    s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        Tq, Tk = s.shape[-2:]
        s = s.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq).logical_not(), -math.inf)
    return torch.softmax(s, -1) @ v.double()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_16_bit_inputs_accumulate_in_float32_over_many_blocks(dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 8, generator=g).to(dtype), torch.randn(1, 2, 600, 8, generator=g).to(dtype),
               torch.randn(1, 2, 600, 8, generator=g).to(dtype))
    out = tiled_attention(q, k, v, block_size=1)  # 600 updates of the running state
    assert out.dtype == dtype
    ref = _reference(q, k, v)
    assert (out.double() - ref).abs().max() < 2 * EPS[dtype] * ref.abs().max() + 1e-3
    m, l, acc = online_softmax_init(q, v)
    assert m.dtype == l.dtype == acc.dtype == torch.float32
    state = online_softmax_update((m, l, acc), torch.randn(1, 2, 3, 4).to(dtype), v[..., :4, :])
    assert all(t.dtype == torch.float32 for t in state)
    assert online_softmax_finish(state).dtype == torch.float32  # dtype None: as accumulated
    assert online_softmax_finish(state, dtype).dtype == dtype


def test_tiled_attention_defaults():
    params = inspect.signature(tiled_attention).parameters
    assert {k: params[k].default for k in ("mask", "bias", "causal", "scale", "block_size", "query_block_size")} == {
        "mask": None, "bias": None, "causal": False, "scale": None, "block_size": 128, "query_block_size": None}
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 5, 6, generator=g), torch.randn(2, 300, 6, generator=g), torch.randn(2, 300, 3, generator=g)
    default = tiled_attention(q, k, v)
    torch.testing.assert_close(default, _reference(q, k, v).float(), atol=1e-5, rtol=1e-5)  # scale 1/sqrt(Dk)
    explicit = tiled_attention(q, k, v, None, None, causal=False, scale=1 / math.sqrt(6), block_size=128,
                               query_block_size=None)
    torch.testing.assert_close(default, explicit)
    assert not torch.allclose(tiled_attention(q, k, v, scale=1.0), default, atol=1e-4)
    torch.testing.assert_close(tiled_attention(q, k, v, causal=True, query_block_size=2),
                               _reference(q, k, v, causal=True).float(), atol=1e-5, rtol=1e-5)
