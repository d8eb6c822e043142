"""Memory accounting in bytes: parameters, optimizer state, activations, attention matrices.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    T   sequence length
    D   d_model
    F   d_ff, the FFN hidden size (4 D in the paper)
    P   number of parameters

Training memory has four parts, each computed here exactly and checked against
measurement in ``tests/test_memory.py``:

1. **Parameters.** A Transformer layer holds four linear maps of sizes
   (D, 3D) for q, k, v, (D, D) for the output projection, (D, F) and (F, D) for
   the FFN: 3D² + D² + 2DF = 12 D² when F = 4D.  Biases add 3D + D + F + D and
   each LayerNorm 2D, so an encoder layer has exactly 12 D² + 13 D parameters.
2. **Optimizer state.** Adam keeps two moments per parameter.  With mixed
   precision every parameter costs 20 bytes (see ``AdamMixedPrecisionBytes``).
3. **Activations.** Autograd saves some tensors of the forward pass for the
   backward pass; most are (B, T, D) or (B, T, F) (``encoder_layer_saved_tensors``
   lists them for ``lib.transformer.EncoderBlock``).
4. **Attention matrices.** The explicit attention saves its (B, H, T, T) weights:
   quadratic in T.  Fused kernels (flash attention) recompute them instead.

References:
    Rajbhandari et al. (2020), ZeRO, section 3.1: mixed-precision Adam state.
    Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
    Transformer Models", section 4.1: activation memory per layer.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "bytes_per_element",
    "tensor_bytes",
    "count_parameters",
    "layer_parameter_breakdown",
    "layer_parameters",
    "parameter_bytes",
    "AdamMixedPrecisionBytes",
    "adam_mixed_precision_bytes",
    "adam_state_bytes",
    "optimizer_state_bytes",
    "activation_bytes",
    "attention_matrix_bytes",
    "SavedTensor",
    "encoder_layer_saved_tensors",
    "encoder_layer_activation_bytes",
    "group_bytes",
    "decoder_layer_saved_tensors",
    "encoder_saved_tensors",
    "decoder_saved_tensors",
    "transformer_saved_tensors",
    "measure_saved_tensors",
    "cuda_peak_bytes",
    "measure_peak_bytes",
    "TrainingStepBytes",
    "training_step_bytes",
    "measure_training_step",
    "format_bytes",
]


# ---------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------


def bytes_per_element(dtype: torch.dtype) -> int:
    """Bytes of one element: 4 for float32, 2 for float16/bfloat16, 1 for bool."""
    return torch.empty(0, dtype=dtype).element_size()


def tensor_bytes(shape: Iterable[int], dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense tensor of this shape and dtype: prod(shape) x bytes per element."""
    return math.prod(shape) * bytes_per_element(dtype)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def format_bytes(n: float) -> str:
    """Human-readable size with binary prefixes: 1536 -> '1.50 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------
# 1. Parameters
# ---------------------------------------------------------------------------


def layer_parameter_breakdown(
    d_model: int,
    d_ff: int | None = None,
    *,
    bias: bool = True,
    num_norms: int = 2,
    cross_attention: bool = False,
) -> dict[str, int]:
    """Exact parameter count of one Transformer layer, part by part.

    An encoder layer (``lib.transformer.EncoderBlock``, ``torch.nn.TransformerEncoderLayer``)
    is self-attention + FFN + 2 LayerNorms; a decoder layer adds cross-attention
    and a third LayerNorm (``cross_attention=True, num_norms=3``).

    Args:
        d_model: D.
        d_ff: F; default 4 D (the paper).
        bias: biases in the attention projections and the FFN.
        num_norms: LayerNorms in the layer (2 weights of size D each: gain and bias).
        cross_attention: add a second attention block (decoder layers).

    Returns:
        ``{"attention q, k, v": D·3D (+3D), "attention output": D·D (+D),
        "ffn fc1": D·F (+F), "ffn fc2": F·D (+D), "layer norms": num_norms·2D}``
        (with ``"cross-attention ..."`` entries when asked).
    """
    D = d_model
    F = 4 * D if d_ff is None else d_ff
    if D < 1 or F < 1 or num_norms < 0:
        raise ValueError(f"d_model and d_ff must be positive and num_norms >= 0, got {D}, {F}, {num_norms}")
    b = 1 if bias else 0
    parts = {
        "attention q, k, v": D * 3 * D + b * 3 * D,  # W_q, W_k, W_v: (D, 3D) together
        "attention output": D * D + b * D,  # W_o: (D, D)
    }
    if cross_attention:
        parts["cross-attention q, k, v"] = D * 3 * D + b * 3 * D
        parts["cross-attention output"] = D * D + b * D
    parts["ffn fc1"] = D * F + b * F  # W1: (D, F)
    parts["ffn fc2"] = F * D + b * D  # W2: (F, D)
    parts["layer norms"] = num_norms * 2 * D  # gain and bias per LayerNorm
    return parts


def layer_parameters(
    d_model: int,
    d_ff: int | None = None,
    *,
    bias: bool = True,
    num_norms: int = 2,
    cross_attention: bool = False,
) -> int:
    """Parameters of one Transformer layer: 12 D² + 13 D for an encoder layer with F = 4D.

    In general 4 D² + 2 D F (weights) + 4 D + F + D (biases) + 2 D·num_norms.
    See ``layer_parameter_breakdown`` for the arguments.
    """
    return sum(
        layer_parameter_breakdown(
            d_model, d_ff, bias=bias, num_norms=num_norms, cross_attention=cross_attention
        ).values()
    )


def parameter_bytes(num_params: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes to store ``num_params`` parameters in ``dtype``."""
    return num_params * bytes_per_element(dtype)


# ---------------------------------------------------------------------------
# 2. Optimizer state
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AdamMixedPrecisionBytes:
    """Bytes per training run's *state* with mixed-precision Adam, part by part.

    The forward and backward passes run in fp16; the update is done in fp32 on a
    master copy, so that small updates are not rounded away (Micikevicius et al. 2018).
    Per parameter: 4 fp32 tensors (master weights, gradients, momentum, variance)
    x 4 bytes + 2 fp16 tensors (weights, gradients) x 2 bytes = 16 + 4 = 20 bytes.
    ZeRO (Rajbhandari et al. 2020) counts 16 bytes: it drops the fp32 gradient
    copy, converting each gradient to fp32 on the fly (``fp32_gradients=False``).
    """

    num_params: int  # P
    fp16_weights: int  # 2 P: the working copy used by forward and backward
    fp16_gradients: int  # 2 P: what backward produces
    fp32_master_weights: int  # 4 P: the copy the optimizer updates
    fp32_gradients: int  # 4 P: gradients unscaled into fp32 for the update (0 if not kept)
    fp32_momentum: int  # 4 P: Adam's first moment m (exp_avg)
    fp32_variance: int  # 4 P: Adam's second moment v (exp_avg_sq)

    @property
    def total(self) -> int:
        """All of the above, in bytes."""
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "num_params")

    @property
    def per_parameter(self) -> float:
        """Bytes per parameter: 20 (or 16 without the fp32 gradients)."""
        return self.total / self.num_params if self.num_params else 0.0

    def rows(self) -> list[tuple[str, int]]:
        """``(name, bytes)`` for each part, for a table."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "num_params"]


def adam_mixed_precision_bytes(num_params: int, *, fp32_gradients: bool = True) -> AdamMixedPrecisionBytes:
    """Weights, gradients and Adam state for mixed-precision training: 20 bytes per parameter.

    Args:
        num_params: P.
        fp32_gradients: keep an fp32 copy of the gradients (20 B/param); without
            it 16 B/param, ZeRO's count (K = 12 bytes of fp32 optimizer state).
    """
    P = num_params
    fp32, fp16 = bytes_per_element(torch.float32), bytes_per_element(torch.float16)
    return AdamMixedPrecisionBytes(
        num_params=P,
        fp16_weights=fp16 * P,
        fp16_gradients=fp16 * P,
        fp32_master_weights=fp32 * P,
        fp32_gradients=fp32 * P if fp32_gradients else 0,
        fp32_momentum=fp32 * P,
        fp32_variance=fp32 * P,
    )


def adam_state_bytes(
    num_params: int,
    num_tensors: int,
    dtype: torch.dtype = torch.float32,
    *,
    amsgrad: bool = False,
    step_dtype: torch.dtype = torch.float32,
) -> int:
    """What ``torch.optim.Adam`` keeps in ``optimizer.state`` after its first step.

    Per parameter tensor: ``exp_avg`` and ``exp_avg_sq`` of its shape and dtype
    (plus ``max_exp_avg_sq`` with ``amsgrad``) and a one-element ``step`` tensor.

    Args:
        num_params: P, total elements of the parameters.
        num_tensors: number of parameter tensors (one ``step`` each).
        dtype: the parameters' dtype.
        amsgrad: Adam's AMSGrad variant keeps a third moment buffer.
        step_dtype: dtype of the ``step`` counter (float32 unless the default dtype is float64).
    """
    moments = 3 if amsgrad else 2
    return moments * num_params * bytes_per_element(dtype) + num_tensors * bytes_per_element(step_dtype)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Measured: bytes of every tensor in ``optimizer.state`` (element_size x nelement)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                total += value.element_size() * value.nelement()
    return total


# ---------------------------------------------------------------------------
# 3-4. Activations and attention matrices
# ---------------------------------------------------------------------------


def activation_bytes(
    batch: int, seq_len: int, d_model: int, num_saved: int = 1, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of ``num_saved`` activation tensors of shape (B, T, D): B·T·D·num_saved x bytes per element."""
    return batch * seq_len * d_model * num_saved * bytes_per_element(dtype)


def attention_matrix_bytes(
    batch: int,
    num_heads: int,
    seq_len: int,
    num_saved: int = 1,
    dtype: torch.dtype = torch.float32,
    *,
    key_len: int | None = None,
) -> int:
    """Bytes of ``num_saved`` attention matrices (B, H, Tq, Tk): B·H·T² per matrix x bytes per element."""
    Tk = seq_len if key_len is None else key_len
    return batch * num_heads * seq_len * Tk * num_saved * bytes_per_element(dtype)


_D, _F, _ATT, _STATS, _IDS = "(B, T, D)", "(B, T, F)", "attention", "norm statistics", "token ids"


@dataclass(frozen=True)
class SavedTensor:
    """One tensor that autograd keeps from the forward pass for the backward pass."""

    name: str  # what it is and which operation saves it
    shape: tuple[int, ...]  # its shape
    dtype: torch.dtype  # its dtype
    kind: str  # "(B, T, D)", "(B, T, F)", "attention", "norm statistics" or "token ids"

    @property
    def bytes(self) -> int:
        return tensor_bytes(self.shape, self.dtype)


def _check_activation(activation: str) -> None:
    if activation not in ("relu", "gelu"):
        raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")


def _attention_saved(
    B: int, Tq: int, Tk: int, D: int, H: int, *, masked: bool, dtype: torch.dtype, query_input: str,
    key_input: str | None = None, prefix: str = "",
) -> list[SavedTensor]:
    """What one explicit multi-head attention saves: its input(s), q, k, v, the weights, the merged heads.

    ``key_input=None`` is self-attention (one input feeds W_q, W_k, W_v); otherwise the
    key/value input is someone else's tensor (cross-attention's encoder memory) and not listed.
    """
    BqD, BkD, BHQK = (B, Tq, D), (B, Tk, D), (B, H, Tq, Tk)
    who = "W_q, W_k, W_v" if key_input is None else "W_q"
    saved = [
        SavedTensor(f"{query_input} (input of {prefix}{who})", BqD, dtype, _D),
        SavedTensor(f"{prefix}q (for q kᵀ)", BqD, dtype, _D),
        SavedTensor(f"{prefix}k (for q kᵀ)", BkD, dtype, _D),
        SavedTensor(f"{prefix}v (for weights @ v)", BkD, dtype, _D),
        SavedTensor(f"{prefix}softmax output: attention weights", BHQK, dtype, _ATT),
    ]
    if masked:
        saved.append(SavedTensor(f"{prefix}masked weights (for weights @ v)", BHQK, dtype, _ATT))
    saved.append(SavedTensor(f"{prefix}heads merged (input of W_o)", BqD, dtype, _D))
    return saved


def _ffn_saved(B: int, T: int, F: int, activation: str, dtype: torch.dtype) -> list[SavedTensor]:
    """The FFN's hidden tensors (its input is listed by the caller): ReLU one (B, T, F), GELU two."""
    if activation == "relu":
        return [SavedTensor("ReLU output (also the input of fc2)", (B, T, F), dtype, _F)]
    return [
        SavedTensor("fc1 output (GELU input)", (B, T, F), dtype, _F),
        SavedTensor("GELU output (input of fc2)", (B, T, F), dtype, _F),
    ]


Device = torch.device | str | None


def _stats_dtype(dtype: torch.dtype, device: Device) -> torch.dtype:
    """The dtype of LayerNorm's saved mean and 1/std for inputs (and weights) of ``dtype`` on ``device``.

    Measured on the CPU: its kernel saves them in the input's dtype, float16 and bfloat16 included.
    CUDA's kernel allocates them in its accumulation type, float32 for 16-bit inputs (ATen's
    ``layer_norm_cuda``); other accelerators (MPS) are taken to do the same. ``device`` None is
    ``lib.runtime.device()``, the device the course runs on.
    """
    if device is None:
        from lib.runtime import device as default_device

        device = default_device()
    if torch.device(device).type != "cpu" and dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def _norm_stats(B: int, T: int, num_norms: int, dtype: torch.dtype, device: Device,
                first: int = 1) -> list[SavedTensor]:
    """Each LayerNorm saves its mean and 1/std, (B, T, 1) (dtype: ``_stats_dtype``)."""
    stats = _stats_dtype(dtype, device)
    out = []
    for i in range(first, first + num_norms):
        out.append(SavedTensor(f"LayerNorm {i} mean", (B, T, 1), stats, _STATS))
        out.append(SavedTensor(f"LayerNorm {i} 1/std", (B, T, 1), stats, _STATS))
    return out


def encoder_layer_saved_tensors(
    batch: int,
    seq_len: int,
    d_model: int,
    num_heads: int,
    d_ff: int | None = None,
    *,
    activation: str = "relu",
    masked: bool = False,
    norm_first: bool = False,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> list[SavedTensor]:
    """The tensors autograd saves in one ``lib.transformer.EncoderBlock`` (explicit attention, dropout 0).

    Eight (B, T, D) tensors, one or two (B, T, F), one or two (B, H, T, T) and
    four (B, T, 1) LayerNorm statistics (float32 on CUDA for 16-bit ``dtype``, ``dtype`` on the CPU:
    ``device``, default ``lib.runtime.device()``, says which).  A tensor used by several operations is
    saved once (e.g. the input of W_q, W_k and W_v; ReLU's output is also fc2's
    input).  GELU saves its input *and* fc2 its output: two (B, T, F).  A mask
    makes the masked weights a second (B, H, T, T) tensor (the boolean masks
    themselves are not listed).  Dropout > 0 adds its masks and outputs; fused
    attention kernels save no (B, H, T, T) matrix at all.

    ``measure_saved_tensors`` checks this list against autograd.
    """
    B, T, D, H = batch, seq_len, d_model, num_heads
    F = 4 * D if d_ff is None else d_ff
    _check_activation(activation)
    BTD = (B, T, D)
    first = [SavedTensor("x: block input (LayerNorm 1 input)", BTD, dtype, _D)] if norm_first else []
    attn_in = "LayerNorm 1 output" if norm_first else "x: block input"
    saved = first + _attention_saved(B, T, T, D, H, masked=masked, dtype=dtype, query_input=attn_in)
    if norm_first:
        saved.append(SavedTensor("x + attention (LayerNorm 2 input)", BTD, dtype, _D))
        saved.append(SavedTensor("LayerNorm 2 output (input of fc1)", BTD, dtype, _D))
    else:
        saved.append(SavedTensor("x + attention (LayerNorm 1 input)", BTD, dtype, _D))
        saved.append(SavedTensor("LayerNorm 1 output (input of fc1)", BTD, dtype, _D))
    saved += _ffn_saved(B, T, F, activation, dtype)
    if not norm_first:
        saved.append(SavedTensor("h + FFN (LayerNorm 2 input)", BTD, dtype, _D))
    saved += _norm_stats(B, T, 2, dtype, device)
    return saved


def encoder_layer_activation_bytes(
    batch: int,
    seq_len: int,
    d_model: int,
    num_heads: int,
    d_ff: int | None = None,
    **kwargs: object,
) -> dict[str, int]:
    """Activation bytes of one encoder layer by kind: "(B, T, D)", "(B, T, F)", "attention", "norm statistics", "total".

    With ReLU, F = 4D and no mask: 12·B·T·D + B·H·T² elements (+ 4·B·T statistics).
    Arguments as ``encoder_layer_saved_tensors``.
    """
    return group_bytes(encoder_layer_saved_tensors(batch, seq_len, d_model, num_heads, d_ff, **kwargs))  # type: ignore[arg-type]


def group_bytes(saved: Iterable[SavedTensor]) -> dict[str, int]:
    """Bytes of a list of ``SavedTensor`` by kind ("(B, T, D)", "(B, T, F)", "attention", "norm statistics",
    "token ids"), and their "total"."""
    groups = {kind: 0 for kind in (_D, _F, _ATT, _STATS, _IDS)}
    for t in saved:
        groups[t.kind] += t.bytes
    groups["total"] = sum(groups.values())
    return groups


def decoder_layer_saved_tensors(
    batch: int,
    tgt_len: int,
    src_len: int,
    d_model: int,
    num_heads: int,
    d_ff: int | None = None,
    *,
    activation: str = "relu",
    memory_masked: bool = False,
    norm_first: bool = False,
    include_memory: bool = True,
    dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> list[SavedTensor]:
    """The tensors autograd saves in one decoder layer (explicit attention, dropout 0).

    Vaswani et al. (2017), section 3.1: causal self-attention, cross-attention to the
    encoder's output (the *memory*, (B, S, D) with S = ``src_len``), FFN, three residuals.
    The causal mask makes the self-attention save two (B, H, T, T) tensors; the
    cross-attention saves (B, H, T, S) weights (two with a memory mask).  The memory
    feeds W_k and W_v of every decoder layer: it is one tensor for the whole stack
    (``include_memory=False`` leaves it out, for all layers but one).

    Returns:
        A list of ``SavedTensor``, as ``encoder_layer_saved_tensors``.
    """
    B, T, S, D, H = batch, tgt_len, src_len, d_model, num_heads
    F = 4 * D if d_ff is None else d_ff
    _check_activation(activation)
    BTD = (B, T, D)
    if norm_first:
        saved = [SavedTensor("y: block input (LayerNorm 1 input)", BTD, dtype, _D)]
        saved += _attention_saved(B, T, T, D, H, masked=True, dtype=dtype, query_input="LayerNorm 1 output")
        saved.append(SavedTensor("y + self-attention (LayerNorm 2 input)", BTD, dtype, _D))
        saved += _attention_saved(B, T, S, D, H, masked=memory_masked, dtype=dtype, prefix="cross ",
                                  query_input="LayerNorm 2 output", key_input="memory")
        saved.append(SavedTensor("+ cross-attention (LayerNorm 3 input)", BTD, dtype, _D))
        saved.append(SavedTensor("LayerNorm 3 output (input of fc1)", BTD, dtype, _D))
        saved += _ffn_saved(B, T, F, activation, dtype)
    else:
        saved = _attention_saved(B, T, T, D, H, masked=True, dtype=dtype, query_input="y: block input")
        saved.append(SavedTensor("y + self-attention (LayerNorm 1 input)", BTD, dtype, _D))
        saved += _attention_saved(B, T, S, D, H, masked=memory_masked, dtype=dtype, prefix="cross ",
                                  query_input="LayerNorm 1 output", key_input="memory")
        saved.append(SavedTensor("+ cross-attention (LayerNorm 2 input)", BTD, dtype, _D))
        saved.append(SavedTensor("LayerNorm 2 output (input of fc1)", BTD, dtype, _D))
        saved += _ffn_saved(B, T, F, activation, dtype)
        saved.append(SavedTensor("+ FFN (LayerNorm 3 input)", BTD, dtype, _D))
    if include_memory:
        saved.append(SavedTensor("memory: encoder output (input of cross W_k, W_v)", (B, S, D), dtype, _D))
    return saved + _norm_stats(B, T, 3, dtype, device)


def _sizes(config: object) -> tuple[int, int, int, int, str, bool, bool]:
    """(D, H, F, L, activation, norm_first, final LayerNorm) of an encoder/decoder config, checked."""
    c = config
    if getattr(c, "dropout", 0.0):
        raise ValueError(f"the saved-tensor formulas assume dropout 0 (dropout adds masks), got {c.dropout}")
    if getattr(c, "d_head", None) not in (None, c.d_model // c.num_heads):
        raise ValueError(f"the formulas assume d_head = d_model // num_heads, got d_head={c.d_head}")
    final = getattr(c, "final_norm", None)
    final = c.norm_first if final is None else final
    return c.d_model, c.num_heads, c.d_ff, c.num_layers, getattr(c, "activation", "relu"), c.norm_first, final


def encoder_saved_tensors(
    config: object, batch: int, seq_len: int, *, masked: bool = False, dtype: torch.dtype = torch.float32,
    device: Device = None,
) -> list[SavedTensor]:
    """What autograd saves in a whole ``lib.transformer.Encoder`` (dropout 0): every layer, the token ids,
    and with a final LayerNorm (``final_norm``, by default with pre-norm) its input and statistics.

    Args:
        config: an ``EncoderConfig`` (any object with d_model, num_heads, d_ff, num_layers, norm_first).
        batch, seq_len: B, T.
        masked: a padding (or other) mask is passed.
        dtype: dtype of the activations.
        device: where they live (LayerNorm statistics of 16-bit inputs: float32 on CUDA, ``dtype`` on the
            CPU); default ``lib.runtime.device()``.
    """
    D, H, F, L, act, pre, final = _sizes(config)
    saved = [SavedTensor("token ids (for the embedding's backward)", (batch, seq_len), torch.int64, _IDS)]
    for _ in range(L):
        saved += encoder_layer_saved_tensors(batch, seq_len, D, H, F, activation=act, masked=masked,
                                             norm_first=pre, dtype=dtype, device=device)
    if final:
        saved.append(SavedTensor("last block output (final LayerNorm input)", (batch, seq_len, D), dtype, _D))
        saved += _norm_stats(batch, seq_len, 1, dtype, device, first=0)
    return saved


def decoder_saved_tensors(
    config: object, batch: int, tgt_len: int, src_len: int, *, memory_masked: bool = False,
    dtype: torch.dtype = torch.float32, device: Device = None,
) -> list[SavedTensor]:
    """What autograd saves in a decoder stack (dropout 0): the target ids, every layer (the memory once),
    with pre-norm the final LayerNorm, and the output projection's input (the last hidden states).

    Args:
        config: a ``DecoderConfig`` (d_model, num_heads, d_ff, num_layers, norm_first).
        batch, tgt_len, src_len: B, T (target positions), S (source positions).
    """
    D, H, F, L, act, pre, final = _sizes(config)
    B, T = batch, tgt_len
    saved = [SavedTensor("target ids (for the embedding's backward)", (B, T), torch.int64, _IDS)]
    for i in range(L):
        saved += decoder_layer_saved_tensors(B, T, src_len, D, H, F, activation=act, memory_masked=memory_masked,
                                             norm_first=pre, include_memory=i == 0, dtype=dtype, device=device)
    if final:
        saved.append(SavedTensor("last block output (final LayerNorm input)", (B, T, D), dtype, _D))
        saved += _norm_stats(B, T, 1, dtype, device, first=0)
    saved.append(SavedTensor("decoder output (input of the vocabulary projection)", (B, T, D), dtype, _D))
    return saved


def transformer_saved_tensors(
    config: object, batch: int, src_len: int, tgt_len: int, *, src_masked: bool = False,
    dtype: torch.dtype = torch.float32, device: Device = None,
) -> list[SavedTensor]:
    """Encoder + decoder (``lib.transformer.Transformer``, dropout 0): the encoder's tensors, the decoder's,
    and nothing more -- the memory is saved once, by the decoder (the logits and the loss are the caller's).

    Args:
        config: a ``TransformerConfig`` (its ``encoder()`` and ``decoder()`` configs), or one config for both.
        src_masked: a source padding mask is passed (to the encoder and as the decoder's memory mask).
    """
    enc = config.encoder() if callable(getattr(config, "encoder", None)) else config
    dec = config.decoder() if callable(getattr(config, "decoder", None)) else config
    return (encoder_saved_tensors(enc, batch, src_len, masked=src_masked, dtype=dtype, device=device)
            + decoder_saved_tensors(dec, batch, tgt_len, src_len, memory_masked=src_masked, dtype=dtype,
                                    device=device))


def measure_saved_tensors(
    fn: Callable[[], Tensor], exclude: Iterable[Tensor] = ()
) -> list[tuple[tuple[int, ...], torch.dtype, int]]:
    """Measured: the tensors autograd saves while ``fn()`` runs, one entry per distinct storage.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: every tensor an operation
    keeps for backward passes through the hook; views of one storage (a reshape,
    a transpose) are counted once, with the storage's size.

    Args:
        fn: runs the forward pass (its inputs should require grad).
        exclude: tensors not to count, typically ``module.parameters()``.

    Returns:
        ``[(shape, dtype, bytes), ...]``, largest first.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, tuple[tuple[int, ...], torch.dtype, int]] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen[ptr] = (tuple(t.shape), t.dtype, storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sorted(seen.values(), key=lambda s: -s[2])


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Measured on CUDA: ``torch.cuda.max_memory_allocated`` while ``fn()`` runs, minus what was there before.

    Raises:
        RuntimeError: when CUDA is not available.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_peak_bytes needs a CUDA device")
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# ---------------------------------------------------------------------------
# Peak memory, on any device: a dispatch mode that counts live tensors
# ---------------------------------------------------------------------------


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of every storage that an operation allocates while active, until it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        if self._storages.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, Tensor) and t.device.type != "meta"}
        for t in pytree.tree_leaves(out):
            if not isinstance(t, Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in inputs and storage.nbytes():
                continue  # a view of an input or an in-place result: no new memory
            key = id(storage)
            if key in self._storages and self._storages[key]() is storage:
                continue  # a view or an in-place result: nothing new
            nbytes = storage.nbytes()
            self._storages[key] = weakref.ref(storage, lambda _, k=key, n=nbytes: self._freed(k, n))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def measure_peak_bytes(fn: Callable[[], object]) -> int:
    """Measured on any device: the peak bytes of the tensors allocated while ``fn()`` runs.

    Every ATen operation's outputs are counted from the moment they are made until
    their storage is freed (a ``TorchDispatchMode`` with weak references), so the
    result is the high-water mark *above* what existed before the call, as
    ``cuda_peak_bytes`` measures it on a GPU.  It sees what the program allocates;
    a kernel's private scratch space and the allocator's rounding are not included.
    What ``fn`` returns is dropped before the call returns.
    """
    tracker = _LiveTensorBytes()
    with tracker:
        out = fn()
    del out
    return tracker.peak


# ---------------------------------------------------------------------------
# A whole training step
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingStepBytes:
    """The four parts of a training step's memory, in bytes, and their sum.

    The sum is the usual estimate of the peak: at the start of the backward pass
    every saved activation is still alive, and by its end every gradient is.
    """

    parameters: int  # the weights
    gradients: int  # one per parameter, same dtype
    optimizer_state: int  # e.g. Adam's two moments and step counters
    activations: int  # what autograd saves for the backward pass

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations

    def rows(self) -> list[tuple[str, int]]:
        """``(name, bytes)`` for each part and the total, for a table."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)] + [("total", self.total)]


def training_step_bytes(
    model: nn.Module, activations: int, *, optimizer: str = "adam", mixed_precision: bool = False
) -> TrainingStepBytes:
    """Predicted memory of one training step of ``model``: parameters, gradients, optimizer state, activations.

    Args:
        model: the module (its parameters are counted; trainable ones get gradients and state).
        activations: saved bytes, e.g. ``group_bytes(encoder_saved_tensors(...))["total"]``.
        optimizer: "adam" (two fp32 moments per parameter and a step counter per tensor) or "sgd" (none).
        mixed_precision: 16-bit weights and gradients with fp32 master weights, gradients and Adam moments:
            20 bytes per trainable parameter split as ``adam_mixed_precision_bytes`` does (a frozen one
            keeps only its 16-bit weights: 2 bytes).
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    params = [p for p in model.parameters()]
    trainable = [p for p in params if p.requires_grad]
    P, Pt = sum(p.numel() for p in params), sum(p.numel() for p in trainable)
    if mixed_precision:
        if optimizer != "adam":
            raise ValueError("mixed_precision=True describes mixed-precision Adam; use optimizer='adam'")
        # every weight has its 16-bit working copy; only the trainable ones (those the optimizer
        # updates) have an fp32 master copy, gradients and moments
        mp = adam_mixed_precision_bytes(Pt)
        return TrainingStepBytes(
            parameters=parameter_bytes(P, torch.float16) + mp.fp32_master_weights,
            gradients=mp.fp16_gradients + mp.fp32_gradients,
            optimizer_state=mp.fp32_momentum + mp.fp32_variance,
            activations=activations,
        )
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    dtype = trainable[0].dtype if trainable else torch.float32
    state = adam_state_bytes(Pt, len(trainable), dtype) if optimizer == "adam" else 0
    return TrainingStepBytes(param_bytes, grad_bytes, state, activations)


def measure_training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], Tensor]
) -> dict[str, int]:
    """Measured: one step (zero_grad, forward, backward, optimizer.step) and its peak memory.

    Run one step first so that the optimizer's state exists, as it does in every step
    but the first.  Returns ``{"parameters", "optimizer_state", "step peak" (above them,
    ``measure_peak_bytes``), "peak" (their sum)}``.  On CUDA compare with
    ``cuda_peak_bytes``.
    """
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state = optimizer_state_bytes(optimizer)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    optimizer.zero_grad(set_to_none=True)
    extra = measure_peak_bytes(step)
    return {"parameters": param_bytes, "optimizer_state": state, "step peak": extra,
            "peak": param_bytes + state + extra}
