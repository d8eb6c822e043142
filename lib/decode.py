"""Decoding a sequence-to-sequence model: greedy search and beam search, incremental with a key/value cache.

Shape legend (used in every docstring and shape comment of this module):
    B   batch size (number of source sentences)
    K   beam size
    S   source length
    T   number of target tokens fed so far
    V   target vocabulary size
    D   d_model

At inference the decoder is **auto-regressive**: token ``t`` is chosen from
``p(y_t | y_<t, x)`` and fed back as the input of step ``t + 1``.  Recomputing
the whole prefix at every step costs O(T^2) token-layer passes for T tokens;
with a **key/value cache** every step feeds only the one new token, whose
queries attend to the cached keys and values of the earlier positions (and to
the encoder output, whose projections are cached too), O(T) in all.  Both paths
are here behind ``use_cache``, and the tests prove they choose identical tokens.

The model is anything with the two methods of ``lib.transformer.Transformer``:

* ``encode(src, src_valid_lens) -> (memory, memory_mask)``: (B, S, D) and a mask broadcastable
  to (B, H, T, S) or None;
* ``decode(tgt, memory, memory_mask, record=None) -> logits`` (B, T_new, V),
  where ``record=Record(cache=KVCache())`` makes it read and extend the cache, so
  ``tgt`` holds only the new token(s).

Beam search keeps the ``K`` best partial translations by total log-probability
and, when a hypothesis ends in ``<eos>``, scores it with the length penalty of
Wu et al. (2016), section 7::

    score(Y) = log P(Y | X) / lp(Y),    lp(Y) = ((5 + |Y|) / 6) ** alpha

Without it (``alpha = 0``) every extra token adds a negative log-probability, so
short outputs win.  ``|Y|`` counts the generated tokens including ``<eos>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lib.attention import KVCache, Record
from lib.runtime import check_positive_int, eval_mode

__all__ = [
    "Decoded",
    "BeamStep",
    "length_penalty",
    "beam_step",
    "greedy_decode",
    "beam_search",
    "top_k_filter",
    "top_p_filter",
    "sample_next",
    "generate",
]


@dataclass
class Decoded:
    """The output of ``greedy_decode`` / ``beam_search`` for a batch of sources.

    Attributes:
        tokens: one list of token ids per source, without ``<bos>`` and ``<eos>``.
        scores: the total log-probability of each output (including ``<eos>`` when it was produced);
            for beam search, divided by the length penalty (the quantity beam search maximises).
        finished: whether each output ended with ``<eos>`` (False: cut at ``max_len``).
    """

    tokens: list[list[int]]
    scores: list[float]
    finished: list[bool]


# ---------------------------------------------------------------------------
# Stepping the model, with or without the cache
# ---------------------------------------------------------------------------


class _Stepper:
    """Next-token log-probabilities for a growing prefix: the cached or the recomputing way."""

    def __init__(self, model: nn.Module, memory: Tensor, memory_mask: Tensor | None, use_cache: bool) -> None:
        self.model, self.memory, self.memory_mask = model, memory, memory_mask
        self.record = Record(cache=KVCache()) if use_cache else None

    def log_probs(self, prefix: Tensor) -> Tensor:
        """prefix (N, T) ids fed so far -> log p(next | prefix) (N, V)."""
        if self.record is not None:
            logits = self.model.decode(prefix[:, -1:], self.memory, self.memory_mask, record=self.record)  # (N, 1, V)
        else:
            logits = self.model.decode(prefix, self.memory, self.memory_mask)  # (N, T, V)
        return torch.log_softmax(logits[:, -1].float(), dim=-1)  # (N, V)

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (N',) of everything that has a batch dimension."""
        self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None and self.memory_mask.shape[0] > 1:
            self.memory_mask = self.memory_mask.index_select(0, index)
        if self.record is not None:
            self.record.cache.reorder(index)


def _check_src(src: Tensor, src_valid_lens: Tensor | None, max_len: int) -> None:
    if src.dim() != 2:
        raise ValueError(f"src must be token ids of shape (B, S), got {tuple(src.shape)}")
    if src_valid_lens is not None and (src_valid_lens.shape != (src.shape[0],) or src_valid_lens.is_floating_point()):
        raise ValueError(f"src_valid_lens must be integer lengths of shape (B,) = ({src.shape[0]},), got "
                         f"{tuple(src_valid_lens.shape)} {src_valid_lens.dtype}")
    check_positive_int(max_len=max_len)


# ---------------------------------------------------------------------------
# Greedy search
# ---------------------------------------------------------------------------


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    src: Tensor,
    src_valid_lens: Tensor | None = None,
    *,
    bos: int,
    eos: int,
    max_len: int,
    use_cache: bool = True,
) -> Decoded:
    """Pick the most probable token at every step until ``<eos>`` or ``max_len`` tokens.

    Args:
        model: ``encode(src, src_valid_lens)`` and ``decode(tgt, memory, memory_mask, record=...)``, see the
            module docstring (``lib.transformer.Transformer``).
        src: (B, S) source ids, padded after the real tokens.
        src_valid_lens: (B,) number of real tokens per source; None = no padding.
        bos, eos: the target's begin- and end-of-sentence ids.
        max_len: the most tokens generated per source (``<eos>`` included).
        use_cache: feed one new token per step with a key/value cache (True) or the whole prefix (False).

    Returns:
        ``Decoded``; rows that reached ``<eos>`` stop growing while the others go on.
    """
    _check_src(src, src_valid_lens, max_len)
    with eval_mode(model):
        B = src.shape[0]
        memory, memory_mask = model.encode(src, src_valid_lens)  # (B, S, D), (B, 1, 1, S) or None
        stepper = _Stepper(model, memory, memory_mask, use_cache)
        prefix = torch.full((B, 1), bos, dtype=torch.long, device=src.device)  # (B, 1)
        scores = torch.zeros(B, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        out: list[list[int]] = [[] for _ in range(B)]
        for _ in range(max_len):
            logp = stepper.log_probs(prefix)  # (B, V)
            best_logp, token = logp.max(dim=-1)  # (B,), (B,)
            scores = torch.where(done, scores, scores + best_logp)
            for b in torch.nonzero(~done & (token != eos)).flatten().tolist():
                out[b].append(int(token[b]))
            done = done | (token == eos)
            if bool(done.all()):
                break
            prefix = torch.cat([prefix, token[:, None]], dim=1)  # (B, T + 1)
    return Decoded(out, scores.tolist(), done.tolist())


# ---------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------


def length_penalty(length: Tensor | int, alpha: float) -> Tensor:
    """Wu et al. (2016), eq. 14: lp(Y) = ((5 + |Y|) / (5 + 1)) ** alpha; 1 for |Y| = 1 or alpha = 0."""
    length = torch.as_tensor(length, dtype=torch.float32)
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class BeamStep:
    """One step of beam search for a batch (the output of ``beam_step``).

    Attributes:
        scores: (B, K) total log-probabilities of the K best continuations that do not end in ``<eos>``.
        beams: (B, K) which previous beam each continuation extends.
        tokens: (B, K) the token each continuation appends.
        finished_scores: (B, K) total log-probabilities of the candidates that end in ``<eos>`` and rank
            among the K best candidates overall; ``-inf`` where the j-th best candidate is no such one.
        finished_beams: (B, K) the previous beam of each finished candidate (meaningless where -inf).
    """

    scores: Tensor
    beams: Tensor
    tokens: Tensor
    finished_scores: Tensor
    finished_beams: Tensor


def beam_step(scores: Tensor, log_probs: Tensor, eos: int) -> BeamStep:
    """Extend K beams by one token: top-K over beams x vocabulary, with the ``<eos>`` candidates set apart.

    Every beam ``i`` and token ``w`` make a candidate of total score ``scores[i] + log_probs[i, w]``.
    Of the K·V candidates the 2K best are ranked (at most K of them, one per beam, end in ``<eos>``,
    so at least K do not).  The ``<eos>`` candidates among the K best are *finished*; the K best
    of the others stay *live*.  A beam with score ``-inf`` (an unused slot, e.g. all beams but the
    first at the first step) never produces a candidate that wins.

    Args:
        scores: (B, K) total log-probabilities of the live beams.
        log_probs: (B, K, V) log p(next token | beam).
        eos: the end-of-sentence id.

    Returns:
        ``BeamStep`` with (B, K) tensors; ties are broken as ``torch.topk`` breaks them.
    """
    if log_probs.dim() != 3 or scores.shape != log_probs.shape[:2]:
        raise ValueError(
            f"beam_step expects scores (B, K) and log_probs (B, K, V) with the same B, K; got "
            f"{tuple(scores.shape)} and {tuple(log_probs.shape)}"
        )
    B, K, V = log_probs.shape
    if 2 * K > K * V:
        raise ValueError(f"beam size K={K} needs a vocabulary of at least 2 tokens, got V={V}")
    cand = (scores[:, :, None] + log_probs).reshape(B, K * V)  # (B, K*V)
    top_scores, top_idx = cand.topk(2 * K, dim=1)  # (B, 2K), sorted best first
    top_beams = torch.div(top_idx, V, rounding_mode="floor")  # (B, 2K)
    top_tokens = top_idx % V  # (B, 2K)
    is_eos = top_tokens == eos  # (B, 2K)
    # finished: <eos> candidates among the K best of all candidates
    first_k_eos = is_eos[:, :K]  # (B, K)
    finished_scores = torch.where(first_k_eos, top_scores[:, :K], torch.full_like(top_scores[:, :K], -torch.inf))
    finished_beams = top_beams[:, :K]  # (B, K)
    # live: the K best candidates that do not end in <eos> (a stable sort keeps their order)
    order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :K]  # (B, K)
    return BeamStep(
        scores=top_scores.gather(1, order),
        beams=top_beams.gather(1, order),
        tokens=top_tokens.gather(1, order),
        finished_scores=finished_scores,
        finished_beams=finished_beams,
    )


@torch.no_grad()
def beam_search(
    model: nn.Module,
    src: Tensor,
    src_valid_lens: Tensor | None = None,
    *,
    bos: int,
    eos: int,
    max_len: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    use_cache: bool = True,
) -> Decoded:
    """Beam search with the length penalty of Wu et al. (2016); the best hypothesis per source.

    The B sources are decoded together as B·K rows.  At each step ``beam_step`` picks each source's
    K best continuations; candidates that end in ``<eos>`` among the K best are set aside as finished
    hypotheses with score ``log P / lp(length)``.  A source is done once it has K finished hypotheses
    (as fairseq stops); at ``max_len`` its live beams are finished as they are.  The answer is the
    finished hypothesis of highest penalised score.

    Args:
        model, src, src_valid_lens, bos, eos, max_len, use_cache: as in ``greedy_decode``.
        beam_size: K; ``beam_size=1`` with ``alpha=0`` is greedy search.
        alpha: the length-penalty exponent (0 = none; Wu et al. use 0.6-1.0 in practice).

    Returns:
        ``Decoded`` with the penalised scores.
    """
    _check_src(src, src_valid_lens, max_len)
    check_positive_int(beam_size=beam_size)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    with eval_mode(model):
        B, K, dev = src.shape[0], beam_size, src.device
        memory, mask = model.encode(src, src_valid_lens)  # (B, S, D), (B, 1, 1, S) or None
        rows = torch.arange(B, device=dev).repeat_interleave(K)  # (B*K,) source of each row
        if mask is not None and mask.shape[0] > 1:
            mask = mask.index_select(0, rows)  # (B*K, ...)
        stepper = _Stepper(model, memory.index_select(0, rows), mask, use_cache)  # memory (B*K, S, D)
        prefix = torch.full((B * K, 1), bos, dtype=torch.long, device=dev)  # (B*K, 1)
        scores = torch.full((B, K), -torch.inf, device=dev)
        scores[:, 0] = 0.0  # one live beam at the start: the K copies of <bos> must not all be chosen
        finished: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(B)]
        done = [False] * B
        base = (torch.arange(B, device=dev) * K)[:, None]  # (B, 1) first row of each source
        for t in range(1, max_len + 1):
            logp = stepper.log_probs(prefix).view(B, K, -1)  # (B, K, V)
            step = beam_step(scores, logp, eos)
            lp = float(length_penalty(t, alpha))
            fin_scores, fin_beams = step.finished_scores.tolist(), step.finished_beams.tolist()
            for b in range(B):
                if done[b]:
                    continue
                for s, i in zip(fin_scores[b], fin_beams[b], strict=True):
                    if s != -float("inf") and len(finished[b]) < K:
                        hyp = prefix[b * K + i, 1:].tolist()
                        finished[b].append((s / lp, hyp, True))
                if len(finished[b]) >= K:
                    done[b] = True
            if all(done):
                break
            rows_next = (base + step.beams).flatten()  # (B*K,) previous row of each new beam
            prefix = torch.cat([prefix.index_select(0, rows_next), step.tokens.reshape(-1, 1)], dim=1)  # (B*K, t+1)
            scores = step.scores
            stepper.reorder(rows_next)
        else:
            lp = float(length_penalty(max_len, alpha))
            for b in range(B):
                if not done[b]:
                    for i in range(K):
                        if scores[b, i] > -torch.inf:
                            finished[b].append((float(scores[b, i]) / lp, prefix[b * K + i, 1:].tolist(), False))
    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    return Decoded([h[1] for h in best], [h[0] for h in best], [h[2] for h in best])


# ---------------------------------------------------------------------------
# Sampling from a decoder-only language model (lesson 11)
# ---------------------------------------------------------------------------


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row, set the others to -inf (Fan et al. 2018).

    Ties at the k-th value are all kept.  Shapes: (..., V) -> (..., V).
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"top_k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"top_k must be positive, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
    return logits.masked_fill(logits < kth, -torch.inf)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020, section 3.1): keep the smallest set of tokens whose mass reaches p.

    Sort the probabilities in decreasing order and keep a token when the mass of the tokens
    ranked *before* it is still below ``p``: the most probable token is always kept, and the
    set stops at the first token that brings the mass to ``p`` or beyond.  The others get -inf.
    ``p = 1`` keeps everything.  Shapes: (..., V) -> (..., V).
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    probs, order = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True)  # (..., V) each
    before = probs.cumsum(dim=-1) - probs  # (..., V) the mass ranked before each token
    keep_sorted = before < p  # (..., V)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocabulary order
    return logits.masked_fill(~keep, -torch.inf)


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """One token per row from the next-token logits: temperature, then top-k, then top-p, then a draw.

    ``softmax(logits / temperature)``: below 1 sharpens the distribution, above 1 flattens it;
    ``temperature=0`` is greedy (the argmax, no draw).

    Shapes: logits (B, V) -> tokens (B,) int64.
    """
    if logits.dim() != 2:
        raise ValueError(f"sample_next expects logits (B, V), got {tuple(logits.shape)}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / temperature  # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def generate(model: nn.Module, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> Tensor:
    """Continue ``prompt`` by ``max_new_tokens`` tokens, sampled one at a time (``sample_next``).

    The model is a decoder-only language model: ``model(tokens, record=None) -> logits (B, T, V)``
    and ``model.config.context_len`` (``lib.gpt.GPT``).  With ``use_cache`` each step feeds only the
    newest token and the key/value cache supplies the earlier ones; without, each step feeds the
    whole sequence again.  Both choose the same tokens (a test checks it).

    Past the context length the window slides: the model always reads the last ``context_len``
    tokens, from position 0 (nanoGPT's crop).  Without a cache that is the crop itself; with one,
    the cache is rebuilt from the window whenever it is full (positions restart at 0, which a
    cache of earlier keys cannot express), so beyond the context each step costs a whole window.

    Args:
        model: see above; put in eval mode for the call, its mode restored after.
        prompt: (B, T0) token ids, T0 >= 1 (longer than the context: its last ``context_len`` are read).
        max_new_tokens: how many tokens to add.
        temperature, top_k, top_p: see ``sample_next`` (``temperature=0``: greedy).
        generator: the draws' random generator (seeded: the same tokens every time).
        use_cache: incremental decoding with ``lib.attention.Record(cache=KVCache())``.

    Returns:
        (B, T0 + max_new_tokens): the prompt and its continuation.
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1 or prompt.is_floating_point():
        raise ValueError(f"prompt must be token ids (B, T0) with T0 >= 1, got {prompt.dtype} {tuple(prompt.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ctx = model.config.context_len
    tokens = prompt.long()
    # inference mode: no autograd bookkeeping at all (less per-step overhead than no_grad); the result is
    # cloned outside it, so the caller gets an ordinary tensor (one that may enter a training step)
    with eval_mode(model), torch.inference_mode():
        record = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = model(tokens[:, -ctx:])  # (B, T, V), T <= ctx
            elif record is None or model.cached_length(record) >= ctx:
                record = Record(cache=KVCache())  # first step, or the window slid: fill the cache afresh
                logits = model(tokens[:, -ctx:], record=record)  # (B, T, V)
            else:
                logits = model(tokens[:, -1:], record=record)  # (B, 1, V): only the newest token
            nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)  # (B, T + 1)
    return tokens.clone()
