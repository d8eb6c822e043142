"""Synthesizer attention (Tay et al. 2020): attention weights without query-key dot products.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size
    H   number of heads
    Tq  number of queries          Tk  number of keys (= number of values)
    D   d_model, the input's feature size
    Dh  d_head, the per-head hidden size of the Dense synthesizer; default D // H
    L   max_len, the longest sequence a position-based synthesizer knows (the paper's l)
    K   rank of a factorized Random synthesizer; a, b the factors of a factorized Dense one

Self-attention builds its T x T mixing matrix from pairs of tokens,
``softmax(Q K^T / sqrt(Dh))``. The Synthesizer asks whether the pairs are needed
and *synthesizes* the logits instead (section 3 of the paper):

* **Dense**: each token predicts its own row of logits, one per key position,
  ``B_i = W_2 relu(W_1 X_i + b_1) + b_2`` with W_1: D -> D and W_2: D -> L, cut to the
  actual length (``DenseScores``); factorized: two short rows of sizes a and b with
  a * b >= L, multiplied into one (``FactorizedDenseScores``).
* **Random**: one learned (or fixed, ``trainable=False``) L x L matrix per head, the same
  for every input (``RandomScores``); factorized: ``R = R_1 R_2^T`` of rank K
  (``FactorizedRandomScores``).
* **Mixtures**: ``sum_i alpha_i S_i(X)`` with learnable weights alpha that sum to 1
  (``MixtureScores``), e.g. Random + dot product.

Each class here is a *scores module*: called as ``scores(query, key)`` it returns the
logits (B, H, Tq, Tk). ``lib.multihead.MultiHeadAttention(..., scores=module)`` does the
rest as for every attention: it adds ``bias``, applies the boolean ``mask`` (True = may
attend; causal, padding) **before** the softmax, normalizes over the keys (a fully
masked row gives zeros), applies dropout, multiplies by the values ``G(X) = X W_v``,
merges the heads and projects with ``W_o``. So a synthesizer is another way to produce
the scores inside the same layer, not a copy of it.

Position-based logits (Dense's columns, Random's rows and columns) are indexed by
absolute position. As with ``lib.attention.causal_mask``, when Tk > Tq the queries are
taken to be the *last* Tq positions (a key/value cache); otherwise they are 0 .. Tq-1.

References:
    Tay, Bahri, Metzler, Juan, Zhao, Zheng (2020), "Synthesizer: Rethinking Self-Attention
    in Transformer Models", arXiv:2005.00743, section 3 (equations of each variant) and
    Table 1 (parameter counts: Dense d^2 + d*l, factorized Dense d^2 + d(a + b),
    Random l^2 per head, factorized Random 2*l*k per head, dot product 2 d^2).
    The authors' code: ``synthetic_attention`` in Mesh TensorFlow
    (``mesh_tensorflow/transformer/attention.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.runtime import check_positive_int

__all__ = [
    "DenseScores",
    "FactorizedDenseScores",
    "RandomScores",
    "FactorizedRandomScores",
    "MixtureScores",
    "paper_parameter_count",
    "SourceDenseSynthesizer",
]


# ---------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------


def _lengths(query: Tensor, key: Tensor, max_len: int, who: str, d_model: int | None = None) -> tuple[int, int, int]:
    """Check (B, Tq, D) and (B, Tk, .) inputs against ``max_len``; return (B, Tq, Tk)."""
    if query.dim() != 3 or (d_model is not None and query.shape[-1] != d_model):
        size = "D" if d_model is None else f"D={d_model}"
        raise ValueError(f"{who}: query must have shape (B, Tq, {size}), got {tuple(query.shape)}")
    if key.dim() != 3:
        raise ValueError(f"{who}: key must have shape (B, Tk, Dk_in), got {tuple(key.shape)}")
    if key.shape[0] != query.shape[0]:
        raise ValueError(f"{who}: query and key batch sizes differ: {tuple(query.shape)} and {tuple(key.shape)}")
    B, Tq, Tk = query.shape[0], query.shape[1], key.shape[1]
    if Tq > max_len or Tk > max_len:
        raise ValueError(
            f"{who} synthesizes logits for at most max_len={max_len} positions, got Tq={Tq}, Tk={Tk}: "
            "build it with a larger max_len (its parameters grow with it)"
        )
    return B, Tq, Tk


def _query_rows(Tq: int, Tk: int) -> slice:
    """Absolute positions of the queries: the last Tq of Tk when Tk > Tq (a cache), else 0 .. Tq-1."""
    start = Tk - Tq if Tk > Tq else 0
    return slice(start, start + Tq)


def _linear_init(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """``nn.Linear``'s default initialisation for a weight with ``fan_in`` inputs."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


# ---------------------------------------------------------------------------
# Dense synthesizers: each token predicts its own row of logits
# ---------------------------------------------------------------------------


class _DenseHidden(nn.Module):
    """The Dense synthesizers' shared first layer: relu(W_1 X + b_1), W_1: D -> H * Dh, split into heads."""

    def __init__(self, d_model: int, num_heads: int, max_len: int, d_head: int | None, bias: bool) -> None:
        super().__init__()
        check_positive_int(d_model=d_model, num_heads=num_heads, max_len=max_len)
        if d_head is None:
            if d_model % num_heads != 0:
                raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}; pass d_head explicitly")
            d_head = d_model // num_heads
        check_positive_int(d_head=d_head)
        self.d_model, self.num_heads, self.max_len, self.d_head = d_model, num_heads, max_len, d_head
        self.W_1 = nn.Linear(d_model, num_heads * d_head, bias=bias)  # the paper's W_1 (d x d when H * Dh = D)

    def hidden(self, query: Tensor) -> Tensor:
        """relu(W_1 X + b_1), split into heads: (B, Tq, D) -> (B, H, Tq, Dh)."""
        B, Tq, _ = query.shape
        h = F.relu(self.W_1(query))  # (B, Tq, H*Dh)
        return h.view(B, Tq, self.num_heads, self.d_head).transpose(1, 2)  # (B, H, Tq, Dh)


class DenseScores(_DenseHidden):
    """Dense Synthesizer logits, B_i = W_2 relu(W_1 X_i + b_1) + b_2 (Tay et al. 2020, section 3.1).

    Row i of the logits is a function of token i alone: no token looks at another to
    decide where to attend. Per head: the first layer ``W_1`` maps D to H * Dh (= D by
    default, the paper's d x d, split between the heads as a query projection is), then
    each head h has its own ``W_2[h]``: Dh -> L, whose first Tk outputs are the logits for
    keys 0 .. Tk-1 (the paper's "sliced to the actual length"). No scaling: the logits
    are learned directly. Parameters: D*H*Dh + H*Dh*L (+ H*Dh + H*L biases), i.e. the
    paper's d^2 + d*l when H * Dh = D.

    Only the query input is read; ``key`` gives the number of keys Tk.

    Args:
        d_model: input feature size D.
        num_heads: number of heads H.
        max_len: the longest key sequence L it can score.
        d_head: per-head hidden size Dh; default D // H.
        bias: biases b_1 and b_2.

    Shapes:
        query (B, Tq, D), key (B, Tk, Dk_in) -> logits (B, H, Tq, Tk), Tk <= L.
    """

    def __init__(self, d_model: int, num_heads: int, max_len: int, *, d_head: int | None = None, bias: bool = True) -> None:
        super().__init__(d_model, num_heads, max_len, d_head, bias)
        self.W_2 = nn.Parameter(torch.empty(num_heads, self.d_head, max_len))  # per head Dh -> L
        self.b_2 = nn.Parameter(torch.empty(num_heads, max_len)) if bias else None
        _linear_init(self.W_2, self.b_2, self.d_head)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        _, _, Tk = _lengths(query, key, self.max_len, "DenseScores", self.d_model)
        h = self.hidden(query)  # (B, H, Tq, Dh)
        logits = h @ self.W_2[:, :, :Tk]  # (B, H, Tq, Dh) @ (H, Dh, Tk) -> (B, H, Tq, Tk)
        if self.b_2 is not None:
            logits = logits + self.b_2[:, None, :Tk]  # (H, 1, Tk) broadcasts over B and Tq
        return logits  # (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, max_len={self.max_len}, d_head={self.d_head}"


def _factor(max_len: int) -> tuple[int, int]:
    a = math.isqrt(max_len - 1) + 1  # ceil(sqrt(L))
    return a, -(-max_len // a)  # a * b >= L


class FactorizedDenseScores(_DenseHidden):
    """Factorized Dense Synthesizer logits, C_i = H_A(A_i) * H_B(B_i) (Tay et al. 2020, section 3.1).

    Each token predicts two short rows, ``A_i = W_A h_i + b_A`` of size a and
    ``B_i = W_B h_i + b_B`` of size b, from the shared hidden layer
    ``h_i = relu(W_1 X_i + b_1)``, with a * b >= L. The tiling functions stretch both to
    length a * b and multiply them entry by entry. The paper "composes" the two tilings
    so that equal values do not repeat within a block; we read that as: ``H_A`` repeats
    each entry of A b times, ``H_B`` tiles the whole of B a times, so entry p * b + q of
    the row is A_p * B_q: the flattened outer product, every pair (p, q) once. (Tiling
    both would repeat the row with period lcm(a, b).) The first Tk entries are the logits.
    Parameters: D*H*Dh + H*Dh*(a + b) (+ biases), the paper's d^2 + d(a + b) when H * Dh = D.

    Args:
        d_model: input feature size D.
        num_heads: number of heads H.
        max_len: the longest key sequence L.
        factors: (a, b) with a * b >= L; default a = ceil(sqrt(L)), b = ceil(L / a).
        d_head: per-head hidden size Dh; default D // H.
        bias: biases b_1, b_A, b_B.

    Shapes:
        query (B, Tq, D), key (B, Tk, Dk_in) -> logits (B, H, Tq, Tk), Tk <= L.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        max_len: int,
        *,
        factors: tuple[int, int] | None = None,
        d_head: int | None = None,
        bias: bool = True,
    ) -> None:
        a, b = _factor(max_len) if factors is None else factors
        check_positive_int(a=a, b=b)
        if a * b < max_len:
            raise ValueError(f"factors (a, b) = {(a, b)} give a * b = {a * b} < max_len = {max_len}")
        super().__init__(d_model, num_heads, max_len, d_head, bias)
        self.factors = (a, b)
        self.W_A = nn.Parameter(torch.empty(num_heads, self.d_head, a))  # per head Dh -> a
        self.W_B = nn.Parameter(torch.empty(num_heads, self.d_head, b))  # per head Dh -> b
        self.b_A = nn.Parameter(torch.empty(num_heads, 1, a)) if bias else None
        self.b_B = nn.Parameter(torch.empty(num_heads, 1, b)) if bias else None
        _linear_init(self.W_A, self.b_A, self.d_head)
        _linear_init(self.W_B, self.b_B, self.d_head)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        _, _, Tk = _lengths(query, key, self.max_len, "FactorizedDenseScores", self.d_model)
        h = self.hidden(query)  # (B, H, Tq, Dh)
        A = h @ self.W_A  # (B, H, Tq, a)
        Bf = h @ self.W_B  # (B, H, Tq, b)
        if self.b_A is not None:
            A, Bf = A + self.b_A, Bf + self.b_B
        C = (A.unsqueeze(-1) * Bf.unsqueeze(-2)).flatten(-2)  # (B, H, Tq, a, b) -> (B, H, Tq, a*b)
        return C[..., :Tk]  # (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, max_len={self.max_len}, "
            f"factors={self.factors}, d_head={self.d_head}"
        )


# ---------------------------------------------------------------------------
# Random synthesizers: one matrix per head, the same for every input
# ---------------------------------------------------------------------------


class RandomScores(nn.Module):
    """Random Synthesizer logits: one L x L matrix R per head (Tay et al. 2020, section 3.2).

    ``Y = softmax(R) G(X)``: the mixing weights do not depend on the input at all, only
    on the positions, so one matrix serves every example (a learned, global alignment).
    ``trainable=False`` keeps R at its random initialisation (a buffer, not a
    parameter: it is saved with the model but gets no gradient). Parameters: H * L^2.

    Args:
        num_heads: number of heads H.
        max_len: the longest sequence L.
        trainable: learn R (default) or keep it fixed.
        init_std: R starts as N(0, init_std^2) entries.

    Shapes:
        query (B, Tq, .), key (B, Tk, .) -> logits (B, H, Tq, Tk) (a broadcast view of R), Tq, Tk <= L.
    """

    def __init__(self, num_heads: int, max_len: int, *, trainable: bool = True, init_std: float = 1.0) -> None:
        super().__init__()
        check_positive_int(num_heads=num_heads, max_len=max_len)
        if not init_std >= 0:
            raise ValueError(f"init_std must be non-negative, got {init_std!r}")
        self.num_heads, self.max_len, self.trainable = num_heads, max_len, trainable
        R = torch.randn(num_heads, max_len, max_len) * init_std  # (H, L, L)
        if trainable:
            self.R = nn.Parameter(R)
        else:
            self.register_buffer("R", R)

    def matrix(self, Tq: int, Tk: int | None = None) -> Tensor:
        """The logits for Tq queries and Tk keys, (H, Tq, Tk), before any mask or softmax."""
        Tk = Tq if Tk is None else Tk
        return self.R[:, _query_rows(Tq, Tk), :Tk]  # (H, Tq, Tk)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        B, Tq, Tk = _lengths(query, key, self.max_len, "RandomScores")
        return self.matrix(Tq, Tk).unsqueeze(0).expand(B, -1, -1, -1)  # (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, max_len={self.max_len}, trainable={self.trainable}"


class FactorizedRandomScores(nn.Module):
    """Factorized Random Synthesizer logits, R = R_1 R_2^T of rank K per head (section 3.2).

    R_1, R_2 are (L, K) per head, so the cost per head falls from L^2 to 2 L K (the paper
    uses K = 8). Like ``RandomScores`` it ignores the input's content. Both factors start
    as N(0, K^{-1/2}) entries, so the entries of R start with variance 1.

    Args:
        num_heads: number of heads H.
        max_len: the longest sequence L.
        rank: K.
        trainable: learn R_1 and R_2 (default) or keep them fixed.

    Shapes:
        query (B, Tq, .), key (B, Tk, .) -> logits (B, H, Tq, Tk), Tq, Tk <= L.
    """

    def __init__(self, num_heads: int, max_len: int, rank: int = 8, *, trainable: bool = True) -> None:
        super().__init__()
        check_positive_int(num_heads=num_heads, max_len=max_len, rank=rank)
        self.num_heads, self.max_len, self.rank, self.trainable = num_heads, max_len, rank, trainable
        std = rank ** -0.25
        R_1 = torch.randn(num_heads, max_len, rank) * std  # (H, L, K)
        R_2 = torch.randn(num_heads, max_len, rank) * std  # (H, L, K)
        if trainable:
            self.R_1, self.R_2 = nn.Parameter(R_1), nn.Parameter(R_2)
        else:
            self.register_buffer("R_1", R_1)
            self.register_buffer("R_2", R_2)

    def matrix(self, Tq: int, Tk: int | None = None) -> Tensor:
        """R_1 R_2^T for Tq queries and Tk keys: (H, Tq, Tk)."""
        Tk = Tq if Tk is None else Tk
        return self.R_1[:, _query_rows(Tq, Tk)] @ self.R_2[:, :Tk].transpose(1, 2)  # (H, Tq, K) @ (H, K, Tk)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        B, Tq, Tk = _lengths(query, key, self.max_len, "FactorizedRandomScores")
        return self.matrix(Tq, Tk).unsqueeze(0).expand(B, -1, -1, -1)  # (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, max_len={self.max_len}, rank={self.rank}, trainable={self.trainable}"


# ---------------------------------------------------------------------------
# Mixtures
# ---------------------------------------------------------------------------


class MixtureScores(nn.Module):
    """A weighted sum of scores modules, sum_i alpha_i S_i(X) (Tay et al. 2020, section 3.3).

    The weights are ``alpha = softmax(logits)`` over N learnable logits, so they are
    positive and sum to 1 whatever the optimiser does; they start equal (logits 0)
    unless ``init_logits`` says otherwise. The mixture is taken *before* the softmax over
    the keys, which the layer applies: ``softmax(alpha_1 S_1 + ... + alpha_N S_N)``.
    (The authors' code mixes two with ``sigmoid(a)`` and ``1 - sigmoid(a)``, the same
    thing for N = 2.) Typical: ``MixtureScores([RandomScores(H, L), DotProductScores(D, H)])``.

    Args:
        components: the scores modules S_i, each called as ``S_i(query, key)``.
        init_logits: N starting logits; default zeros (alpha_i = 1 / N).

    Shapes:
        query (B, Tq, D), key (B, Tk, Dk_in) -> logits (B, H, Tq, Tk).
    """

    def __init__(self, components: Sequence[nn.Module], *, init_logits: Sequence[float] | None = None) -> None:
        super().__init__()
        components = list(components)
        if len(components) < 2:
            raise ValueError(f"a mixture needs at least 2 scores modules, got {len(components)}")
        for i, c in enumerate(components):
            if not isinstance(c, nn.Module):
                raise TypeError(f"component {i} must be an nn.Module called as scores(query, key), got {type(c).__name__}")
        self.components = nn.ModuleList(components)
        start = torch.zeros(len(components)) if init_logits is None else torch.tensor(list(init_logits), dtype=torch.float32)
        if start.shape != (len(components),):
            raise ValueError(f"init_logits must have {len(components)} entries, got shape {tuple(start.shape)}")
        self.logits = nn.Parameter(start)

    @property
    def alpha(self) -> Tensor:
        """The mixture weights softmax(logits): (N,), positive, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        alpha = self.alpha  # (N,)
        parts = [c(query, key) for c in self.components]  # each (B, H, Tq, Tk)
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"the mixture's components return logits of different shapes: {sorted(shapes)}")
        return sum(a * p for a, p in zip(alpha, parts, strict=True))  # (B, H, Tq, Tk)


# ---------------------------------------------------------------------------
# The paper's parameter counts
# ---------------------------------------------------------------------------


def paper_parameter_count(
    kind: str, d_model: int, max_len: int, *, num_heads: int = 1, rank: int = 8, factors: tuple[int, int] | None = None
) -> int:
    """Parameters of the logits' function, by the paper's Table 1 (no biases).

    ``"dot"``: W_q and W_k, 2 d^2. ``"dense"``: d^2 + d l. ``"factorized_dense"``:
    d^2 + d (a + b). ``"random"``: l^2 per head. ``"factorized_random"``: 2 l k per head.
    The value and output projections, which every variant has, are not counted.
    """
    d, L, H = d_model, max_len, num_heads
    if kind == "dot":
        return 2 * d * d
    if kind == "dense":
        return d * d + d * L
    if kind == "factorized_dense":
        a, b = _factor(L) if factors is None else factors
        return d * d + d * (a + b)
    if kind == "random":
        return H * L * L
    if kind == "factorized_random":
        return H * 2 * L * rank
    raise ValueError(
        f"unknown kind {kind!r}; expected 'dot', 'dense', 'factorized_dense', 'random' or 'factorized_random'"
    )


# ---------------------------------------------------------------------------
# The lesson's counterexample
# ---------------------------------------------------------------------------


class SourceDenseSynthesizer(nn.Module):
    """A Dense Synthesizer as a learner posted it: **wrong on purpose**, kept for lesson 09.

    Do not use it. Lesson 09 runs it and corrects it step by step; ``tests/test_synthesizer.py``
    shows that it fails the tests ``DenseScores`` passes. What is wrong, against the paper:

    1. the first layer maps d -> l and the second l -> l (the paper: W_1 d -> d, W_2 d -> l);
    2. ``F.softmax(b)`` has no ``dim``: PyTorch guesses (dim 1 for a 2-D input, but dim 0,
       the *batch*, for a 3-D one) and warns;
    3. one sequence of exactly ``max_len`` tokens, no batch, no heads, no mask; a shorter
       sequence fails, because nothing cuts the logits to the actual length.
    """

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, max_len)
        self.dense2 = nn.Linear(max_len, max_len)
        self.value = nn.Linear(d_model, d_model)

    def weights(self, x: Tensor) -> Tensor:
        b = self.dense2(F.relu(self.dense(x)))
        return F.softmax(b)  # the missing dim is the point

    def forward(self, x: Tensor) -> Tensor:
        return self.weights(x) @ self.value(x)
