"""The position-wise feed-forward network and its 1x1-convolution twin.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    T   number of positions (sequence length)
    D   d_model, the feature size at every position
    F   d_ff, the hidden size of the FFN (4 D in the paper)

FFN(x) = max(0, x W1 + b1) W2 + b2 is applied to every position separately and
identically (Vaswani et al. 2017, section 3.3, eq. (2)).  The paper notes that
this is the same as "two convolutions with kernel size 1": a Conv1d with
kernel_size=1 over the positions multiplies each position's features by one
(out, in) matrix, which is exactly what a Linear layer does.  The two modules
here compute the same map; ``PositionWiseFFN.to_conv`` and ``PositionWiseFFNConv.to_linear``
copy the weights across (a Linear weight (out, in) is a Conv1d weight (out, in, 1)).

``PositionWiseFFN`` names its parts as timm's ``Mlp`` does (``fc1``, ``act``,
``drop``, ``fc2``), and puts dropout where ``torch.nn.TransformerEncoderLayer``
does: on the hidden activations, between the two layers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "PositionWiseFFN",
    "PositionWiseFFNConv",
    "SwiGLU",
    "make_activation",
    "linear_to_conv1d",
    "conv1d_to_linear",
    "ACTIVATIONS",
]

Activation = str | Callable[[Tensor], Tensor]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,  # the paper's max(0, .)
    "gelu": nn.GELU,  # BERT, GPT, ViT (exact erf form, as torch's F.gelu)
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new" (Hendrycks and Gimpel's tanh form)
    "silu": nn.SiLU,  # x * sigmoid(x), a.k.a. Swish-1 (Ramachandran et al. 2017); SwiGLU's gate
}
"""Activations known by name."""


class _Lambda(nn.Module):
    """Wrap a plain function (e.g. ``torch.tanh``) so it sits in a module tree."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def make_activation(activation: Activation) -> nn.Module:
    """An activation module from a name ("relu", "gelu"), a module or a function."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)} or pass a callable")
        return ACTIVATIONS[activation]()
    if isinstance(activation, nn.Module):
        return activation
    if callable(activation):
        return _Lambda(activation)
    raise TypeError(f"activation must be a name or a callable, got {type(activation).__name__}")


def _copy_activation(act: nn.Module) -> nn.Module | Callable[[Tensor], Tensor]:
    """What to pass as ``activation`` to build a twin with the same activation."""
    if isinstance(act, _Lambda):
        return act.fn
    return copy.deepcopy(act)  # a module of its own, settings kept (e.g. GELU(approximate="tanh"))


M = TypeVar("M", bound=nn.Module)


def _same_settings(cls: type[M], other: Any, *, bias: bool) -> M:
    """A fresh ``cls`` FFN with ``other``'s sizes, activation and dropout (weights and mode set by the caller)."""
    return cls(other.d_model, other.d_ff, activation=_copy_activation(other.act), dropout=other.drop.p, bias=bias)


def _check_sizes(d_model: int, d_ff: int, dropout: float) -> None:
    if d_model < 1 or d_ff < 1:
        raise ValueError(f"d_model and d_ff must be positive, got d_model={d_model}, d_ff={d_ff}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class PositionWiseFFN(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2 at every position -- Vaswani et al. (2017), eq. (2).

    Two ``nn.Linear`` layers; a Linear acts on the last axis, so every position
    is transformed on its own with the same weights.  d2l's ``PositionWiseFFN``
    (``dense1``, ``relu``, ``dense2``, lazy layers) computes the same function.

    Args:
        d_model: input and output feature size D.
        d_ff: hidden size F (2048 = 4 x 512 in the paper).
        activation: "relu" (the paper), "gelu", an ``nn.Module`` or a function.
        dropout: dropout on the hidden activations (between fc1 and fc2).
        bias: whether both layers have a bias.

    Shapes:
        x (B, T, D), or any (..., D) -> (..., D).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: Activation = "relu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes(d_model, d_ff, dropout)
        self.d_model, self.d_ff = d_model, d_ff
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)  # W1: (F, D)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)  # W2: (D, F)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"PositionWiseFFN expects input (..., d_model={self.d_model}), got shape {tuple(x.shape)}"
            )
        h = self.drop(self.act(self.fc1(x)))  # (B, T, F)
        return self.fc2(h)  # (B, T, D)

    def to_conv(self) -> PositionWiseFFNConv:
        """The Conv1d twin with copies of these weights (same device, dtype and train/eval mode)."""
        conv = _same_settings(PositionWiseFFNConv, self, bias=self.fc1.bias is not None)
        conv.conv1 = linear_to_conv1d(self.fc1)
        conv.conv2 = linear_to_conv1d(self.fc2)
        return conv.train(self.training)


class PositionWiseFFNConv(nn.Module):
    """The same FFN as two ``nn.Conv1d(kernel_size=1)`` layers (the Keras Conv1D version).

    A convolution slides over the positions, so with kernel size 1 each output
    position sees only its own input position: the same map as a Linear layer.
    PyTorch convolutions want channels first, so the input is transposed to
    (B, D, T) and back.

    Args:
        d_model, d_ff, activation, dropout, bias: as ``PositionWiseFFN``.

    Shapes:
        x (B, T, D) -> (B, T, D).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: Activation = "relu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes(d_model, d_ff, dropout)
        self.d_model, self.d_ff = d_model, d_ff
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1, bias=bias)  # weight (F, D, 1)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1, bias=bias)  # weight (D, F, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"PositionWiseFFNConv expects input (B, T, d_model={self.d_model}), got shape {tuple(x.shape)}"
            )
        x = x.transpose(1, 2)  # (B, D, T): channels first for Conv1d
        h = self.drop(self.act(self.conv1(x)))  # (B, F, T)
        out = self.conv2(h)  # (B, D, T)
        return out.transpose(1, 2)  # (B, T, D)

    def to_linear(self) -> PositionWiseFFN:
        """The Linear twin with copies of these weights (same device, dtype and train/eval mode)."""
        ffn = _same_settings(PositionWiseFFN, self, bias=self.conv1.bias is not None)
        ffn.fc1 = conv1d_to_linear(self.conv1)
        ffn.fc2 = conv1d_to_linear(self.conv2)
        return ffn.train(self.training)


class SwiGLU(nn.Module):
    """The gated FFN of Shazeer (2020), eq. (6): FFN(x) = (SiLU(x W_gate) ⊙ x W_up) W_down.

    Two input projections instead of one: the SiLU of the first *gates* the second
    element-wise, then ``down`` projects back to D.  Llama, Mistral and Qwen use it
    without biases and with F ≈ 8D/3 (so that its three matrices hold as many parameters
    as the 2017 FFN's two with F = 4D).  Parameter names follow Hugging Face's
    ``LlamaMLP`` (``gate_proj``, ``up_proj``, ``down_proj``) so weights copy by name.

    Args:
        d_model: input and output feature size D.
        d_ff: hidden size F (the size of the gate and of the gated values).
        activation: the gate's activation; "silu" (SwiGLU), "gelu" gives GEGLU.
        dropout: dropout on the gated hidden activations (before ``down_proj``).
        bias: whether the three layers have biases (Llama: no).

    Shapes:
        x (B, T, D), or any (..., D) -> (..., D).
    """

    def __init__(self, d_model: int, d_ff: int, *, activation: Activation = "silu", dropout: float = 0.0,
                 bias: bool = False) -> None:
        super().__init__()
        _check_sizes(d_model, d_ff, dropout)
        self.d_model, self.d_ff = d_model, d_ff
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)  # W_gate: (F, D)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)  # W_up: (F, D)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)  # W_down: (D, F)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"SwiGLU expects input (..., d_model={self.d_model}), got shape {tuple(x.shape)}")
        h = self.act(self.gate_proj(x)) * self.up_proj(x)  # (B, T, F): the gate times the values
        return self.down_proj(self.drop(h))  # (B, T, D)


def linear_to_conv1d(linear: nn.Linear) -> nn.Conv1d:
    """A ``Conv1d(kernel_size=1)`` computing what ``linear`` computes, on channels-first input.

    The Linear weight (out, in) becomes the Conv1d weight (out, in, 1); the bias is copied.
    """
    out_features, in_features = linear.weight.shape
    conv = nn.Conv1d(
        in_features, out_features, kernel_size=1, bias=linear.bias is not None,
        device=linear.weight.device, dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(linear.weight.unsqueeze(-1))  # (out, in) -> (out, in, 1)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv.train(linear.training)


def conv1d_to_linear(conv: nn.Conv1d) -> nn.Linear:
    """The ``nn.Linear`` equal to a pointwise ``Conv1d`` (kernel 1, stride 1, no groups or dilation).

    The Conv1d weight (out, in, 1) becomes the Linear weight (out, in).
    """
    if conv.kernel_size != (1,) or conv.stride != (1,) or conv.groups != 1 or conv.padding not in ((0,), "valid"):
        raise ValueError(
            "only a pointwise Conv1d (kernel_size=1, stride=1, padding=0, groups=1) is a Linear layer; got "
            f"kernel_size={conv.kernel_size}, stride={conv.stride}, padding={conv.padding}, groups={conv.groups}"
        )
    linear = nn.Linear(
        conv.in_channels, conv.out_channels, bias=conv.bias is not None,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(conv.weight.squeeze(-1))  # (out, in, 1) -> (out, in)
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear.train(conv.training)
