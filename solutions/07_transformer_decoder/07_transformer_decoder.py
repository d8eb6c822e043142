# %% [markdown]
# # 07 · The decoder and the full Transformer: English → French
#
# Lesson 06 built the encoder. The decoder turns the encoder's output into a sentence, one
# token at a time, and together they are the whole model of Vaswani et al. (2017). In this
# lesson you will
#
# 1. read what the decoder adds to the encoder block: **masked self-attention** and
#    **cross-attention**, trained with **teacher forcing** on the shifted target, run
#    **auto-regressively** at inference; and the two training devices of the paper,
#    **label smoothing** and the **warm-up schedule**,
# 2. write the decoder's masks (exercise 1),
# 3. prove the machinery on a toy task that a small Transformer learns in seconds (copying
#    a random sequence), tested on sequences it has never seen,
# 4. write one step of **beam search** (exercise 2),
# 5. train on English–French (d2l's `fra-eng`, 167,130 pairs) with a test set of 2,000 English
#    sentences that never occur in training, and measure **corpus BLEU with sacreBLEU** for
#    greedy and beam search, decoding incrementally with a **key/value cache**,
# 6. look at the cross-attention: which source words each French word looks at,
# 7. explain why beam search without a length penalty prefers short outputs (exercise 3).
#
# Shapes: **B** batch, **S** source length, **T** target length, **D** $= d_\text{model}$,
# **H** heads, **V** vocabulary, **K** beam size.
#
# **Points in this lesson: 11** (exercise 1: 4, exercise 2: 5, exercise 3: 2, graded by hand).
#
# *Run time:* full mode trains the translation model for a fixed 1,600 steps (24.6 min in the
# stored run, on a 2-core CPU shared with other jobs; about half that on an idle one, a fraction
# of it on a GPU) and decodes the test set six times; the whole lesson took 30 minutes on the
# busy CPU. `COURSE_QUICK=1` trains on 2,000 pairs for a few steps, only to run every cell.

# %%
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import Tensor

from lib.attention import Record, causal_mask, padding_mask
from lib.checks import call_explained, check_causal, check_close, check_shape, passed
from lib.decode import BeamStep, beam_search, beam_step, greedy_decode
from lib.runtime import device, pick, seed_everything
from lib.text import pad_sequences
from lib.train import SequenceCrossEntropy, fit, transformer_lr, warmup_schedule
from lib.transformer import DecoderBlock, Transformer, TransformerConfig
from lib.translation import TranslationBatches, corpus_bleu, load_fra_eng

seed_everything(0)
dev = device()

# %% [markdown]
# ## 1. What the decoder adds
#
# The encoder maps the source sentence $x_1 \dots x_S$ to a *memory* $M \in \mathbb{R}^{S \times D}$.
# The decoder models the target sentence one token at a time:
#
# $$p(y \mid x) = \prod_{t=1}^{T} p(y_t \mid y_{<t}, x).$$
#
# A decoder block has **three** sub-layers, each in a residual connection with a layer norm
# (post-norm as in the paper, or pre-norm):
#
# 1. **masked self-attention** over the target positions: position $t$ may attend to
#    positions $j \le t$ only. The mask is the lower triangle, *including* the diagonal
#    (a token sees itself):
#    $$\mathrm{mask}_{tj} = [\, j \le t \,] \wedge [\, j \text{ is not padding} \,];$$
# 2. **cross-attention**: queries from the decoder, keys and values from the memory $M$;
#    the source's padding mask keeps it from looking at `<pad>`:
#    $\mathrm{softmax}\big(Q_\text{dec} K_M^\top / \sqrt{d_h}\big) V_M$;
# 3. the position-wise FFN.
#
# A linear layer on top gives logits over the target vocabulary (its weight tied to the target
# embedding, section 3.4).
#
# **Teacher forcing and the shifted target.** In training the decoder reads the *reference*
# target shifted right by one, with `<bos>` in front, and is asked to predict the reference
# itself: input `<bos> je suis chez moi .`, target `je suis chez moi . <eos>`. All $T$ positions
# are trained in one pass; the causal mask keeps position $t$ from seeing the answer at $t$.
#
# **Auto-regression at inference.** There is no reference then: the decoder starts from
# `<bos>`, picks a token, appends it to its input and runs again, until it produces `<eos>`.
# Recomputing every earlier position at every step would cost $O(T^2)$ token passes; since
# position $j$'s keys and values never change once computed (the mask forbids them to depend on
# later tokens), a **key/value cache** keeps them, and each step feeds only the one new token.
#
# **Label smoothing** (Szegedy et al. 2016; section 5.4 of the paper, $\varepsilon = 0.1$)
# trains against $(1-\varepsilon)\,\text{one-hot} + \varepsilon/V$ instead of the one-hot
# target: the loss is $(1-\varepsilon)\,(-\log p_{y}) + \varepsilon \cdot \frac1V\sum_w (-\log p_w)$.
# It hurts perplexity (the model learns to be less sure) but improves BLEU, and keeps logits from
# growing without bound. Here: `nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=pad)`,
# wrapped by `lib.train.SequenceCrossEntropy` for (B, T, V) logits.
#
# **The warm-up schedule** (section 5.3) raises the learning rate linearly for `warmup` steps,
# then lowers it as $1/\sqrt{\text{step}}$:
#
# $$\text{lr}(s) = d_\text{model}^{-0.5} \cdot \min\big(s^{-0.5},\ s \cdot \text{warmup}^{-1.5}\big).$$
#
# Post-norm Transformers need it: at the start Adam's second-moment estimates are poor and the
# gradients of the layers near the output are large, so a full-size step breaks the model.

# %%
steps = torch.arange(1, 20001)
fig, ax = plt.subplots(figsize=(6, 3))
for d_model, warmup in [(512, 4000), (512, 8000), (256, 4000)]:
    _ = ax.plot(steps, [transformer_lr(int(s), d_model, warmup) for s in steps], label=f"d={d_model}, warmup={warmup}")
_ = ax.set(xlabel="step", ylabel="learning rate", title="The paper's warm-up schedule (section 5.3)")
_ = ax.legend()
print(f"peak at step 4000 for d=512: {transformer_lr(4000, 512, 4000):.6f} = (512 * 4000)^-0.5")

# %% [markdown]
# `lib.transformer.DecoderBlock` is the block; the check below is the property that matters
# for training: output $t$ does not depend on inputs after $t$ (the gradient is zero).

# %%
_ = torch.manual_seed(0)
block = DecoderBlock(16, 2, 32, norm_first=False).eval()
memory = torch.randn(2, 5, 16)  # (B, S, D)
x = torch.randn(2, 6, 16)  # (B, T, D)
y = block(x, memory, causal_mask(6))  # (B, T, D)
print(f"x {tuple(x.shape)}, memory {tuple(memory.shape)} -> {tuple(y.shape)}")
check_causal(lambda h: block(h, memory, causal_mask(6)), x, "DecoderBlock with the causal mask")
try:
    check_causal(lambda h: block(h, memory, None), x, "DecoderBlock without a mask")
except AssertionError as err:
    print("without the mask:", str(err).split(" — ")[0], "— as expected")
passed("masked self-attention is causal")

# %% [markdown]
# ## 2. Exercise 1: the decoder's self-attention mask (4 points)
#
# Write `decoder_self_mask(valid_lens, T)` for a batch of targets padded to $T$ tokens, where
# `valid_lens` (B,) holds each target's number of real tokens. Return a boolean tensor of shape
# (B, 1, T, T), **True = may attend**, that is True at $(b, \cdot, t, j)$ exactly when
# $j \le t$ (the causal part, diagonal included) **and** $j <$ `valid_lens[b]` (key $j$ is not
# padding). Do not call `lib.attention.causal_mask` or `padding_mask`, nor `torch.tril`/`torch.triu`:
# compare position indices.

# %% nbgrader={"grade": false, "grade_id": "ex1_decoder_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def decoder_self_mask(valid_lens: Tensor, T: int) -> Tensor:
    """Causal and key-padding mask (B, 1, T, T), True = may attend."""
    ### BEGIN SOLUTION
    t = torch.arange(T, device=valid_lens.device)
    causal = t[None, :] <= t[:, None]  # (T, T): key j <= query t
    keys = t[None, :] < valid_lens[:, None]  # (B, T): key j is a real token
    return causal[None, None] & keys[:, None, None, :]  # (B, 1, T, T)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex1_decoder_mask_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _mask_reference(valid_lens: Tensor, T: int) -> Tensor:
    return causal_mask(T)[None, None] & padding_mask(valid_lens, T)  # (B, 1, T, T)


def _mask_mistakes(valid_lens: Tensor, T: int) -> dict[str, Tensor]:
    ref = _mask_reference(valid_lens, T)
    eye = torch.eye(T, dtype=torch.bool)
    pad = padding_mask(valid_lens, T)
    return {
        "the mask is inverted (True where attention is forbidden)": ~ref,
        "the diagonal is excluded (a token must see itself: j <= t, not j < t)": ref & ~eye,
        "the causal part is off by one: it lets position t see t + 1 (j <= t + 1 instead of j <= t)":
            (causal_mask(T) | torch.diag(torch.ones(T - 1, dtype=torch.bool), 1))[None, None] & pad,
        "the causal part is transposed (queries see the future, not the past)": causal_mask(T).T[None, None] & pad,
        "the padding part is missing": causal_mask(T)[None, None].expand_as(ref),
        "the causal part is missing": pad.expand_as(ref),
        "the padding is applied to the queries instead of the keys": causal_mask(T)[None, None] & pad.transpose(-1, -2),
        "the padding part is off by one: key j is real when j < valid_lens[b], not j <= valid_lens[b]":
            causal_mask(T)[None, None] & padding_mask(torch.clamp(valid_lens + 1, max=T), T),
    }


def check_mask(fn, valid_lens: Tensor, T: int) -> None:
    from lib.checks import forbid

    with forbid("lib.attention.causal_mask", "lib.attention.padding_mask", "torch.tril", "torch.triu"):
        got = fn(valid_lens, T)
    ref = _mask_reference(valid_lens, T)
    if isinstance(got, Tensor) and tuple(got.shape) == (len(valid_lens), T, T):
        raise AssertionError(f"decoder_self_mask(valid_lens, {T}) has shape {tuple(got.shape)} = (B, T, T): add the "
                             "head axis, (B, 1, T, T), so that the mask broadcasts over the heads")
    check_shape(got, tuple(ref.shape), f"decoder_self_mask(valid_lens, {T})")
    if got.dtype != torch.bool:
        raise AssertionError(f"the mask must be boolean (True = may attend), got dtype {got.dtype}")
    if not torch.equal(got, ref):
        for name, wrong in _mask_mistakes(valid_lens, T).items():
            if torch.equal(got, wrong):
                raise AssertionError(f"decoder_self_mask: {name}")
        bad = (got != ref).nonzero()[0].tolist()
        raise AssertionError(f"decoder_self_mask differs from causal & padding first at (b, 0, t, j) = {tuple(bad)}: "
                             f"got {bool(got[tuple(bad)])}, expected {bool(ref[tuple(bad)])}")


check_mask(decoder_self_mask, torch.tensor([4, 2, 1]), 4)
print(decoder_self_mask(torch.tensor([3]), 4)[0, 0].int())
# no causal leak: the block from section 1, with your mask instead of lib's
check_causal(lambda h: block(h, memory, decoder_self_mask(torch.tensor([6, 6]), 6)), x, "DecoderBlock with your mask")
passed("decoder_self_mask is causal (diagonal included) and hides the padded keys")

# %% nbgrader={"grade": true, "grade_id": "ex1_decoder_mask_hidden", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: more shapes, no lib or triangle helpers, no causal leak through a decoder block.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

g = torch.Generator().manual_seed(7)
with forbid("lib.attention.causal_mask", "lib.attention.padding_mask", "torch.tril", "torch.triu"):
    masks = {}
    for B, T in [(1, 1), (2, 3), (5, 9), (3, 17)]:
        lens = torch.randint(1, T + 1, (B,), generator=g)
        masks[(B, T)] = (lens, decoder_self_mask(lens, T))
for (B, T), (lens, got) in masks.items():
    check_mask(lambda v, t, got=got: got, lens, T)
_ = torch.manual_seed(3)
_block = DecoderBlock(8, 2, 16, norm_first=True).eval()
_mem = torch.randn(2, 4, 8)
_lens = torch.tensor([6, 6])
with forbid("lib.attention.causal_mask", "torch.tril", "torch.triu"):
    _m = decoder_self_mask(_lens, 6)
check_causal(lambda h: _block(h, _mem, _m), torch.randn(2, 6, 8), "a DecoderBlock with your mask")
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## 3. The toy task: copying a sequence
#
# Before spending minutes on translation we check the whole machinery (model, shifted target,
# loss, schedule, greedy decoding with the cache) on a task with a known answer: the
# Annotated Transformer's **copy task**. The source is a random sequence of 3–7 symbols out of 10,
# the target the same sequence. A small Transformer learns it in a few hundred steps; the test
# sequences must then come back exactly. They are drawn until 200 do not occur among the training
# sources (short ones often would: there are only 1,000 sequences of length 3), and the cell checks
# it, so the test measures copying, not memory. In the stored run 99 % of them come back exactly.
# Quick mode trains 2 epochs instead of 8, enough to run every cell, not to reach full mode's match.

# %%
PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the same special ids as lib.translation's vocabularies


def copy_task(n: int, g: torch.Generator) -> list[tuple[list[int], list[int]]]:
    """(source, target + <eos>) pairs of random symbols 4..13, lengths 3..7."""
    lens = torch.randint(3, 8, (n,), generator=g)
    seqs = [torch.randint(4, 14, (int(L),), generator=g).tolist() for L in lens]
    return [(s, [*s, EOS]) for s in seqs]


def pad_batch(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Sources padded (with PAD = 0, after the tokens) to the longest: ids (B, S) and their lengths (B,)."""
    lens = torch.tensor([len(s) for s in seqs])
    return pad_sequences(seqs, int(lens.max())), lens


g = torch.Generator().manual_seed(0)
toy_train = copy_task(6000, g)
_seen = {tuple(s) for s, _ in toy_train}
toy_test = [p for p in copy_task(1000, g) if tuple(p[0]) not in _seen][:200]  # unseen sources only
toy_batches = TranslationBatches(toy_train, batch_tokens=512, bos=BOS, seed=0)
_ = torch.manual_seed(0)
toy = Transformer(TransformerConfig(src_vocab_size=14, tgt_vocab_size=14, d_model=32, num_heads=4, d_ff=64,
                                    num_encoder_layers=2, num_decoder_layers=2, dropout=0.0, max_len=16, fast=True))
opt = torch.optim.Adam(toy.parameters(), betas=(0.9, 0.98), eps=1e-9)
sched = warmup_schedule(opt, d_model=32, warmup_steps=100, scale=0.5)
print(f"{len(toy_train)} training pairs in {len(toy_batches)} batches, {sum(p.numel() for p in toy.parameters()):,} parameters")
print(f"{len(toy_test)} test sequences, of which in the training sources: {sum(tuple(s) in _seen for s, _ in toy_test)}")

# %% tags=["nbval-ignore-output"]
toy_history = fit(toy, toy_batches, epochs=pick(full=8, quick=2), optimizer=opt, loss_fn=SequenceCrossEntropy(PAD),
                  scheduler=sched, scheduler_interval="step", device="cpu", seed=0)

# %% tags=["nbval-ignore-output"]
src, src_lens = pad_batch([s for s, _ in toy_test])
out = greedy_decode(toy, src, src_lens, bos=BOS, eos=EOS, max_len=10)
exact = sum(o == t[:-1] for o, (_, t) in zip(out.tokens, toy_test, strict=True)) / len(toy_test)
print(f"exact match on {len(toy_test)} unseen sequences: {exact:.0%}")
print("source", toy_test[0][0], "-> output", out.tokens[0])

# %% [markdown]
# ## 4. Beam search
#
# Greedy search takes the most probable token at every step; a good first word can lead to a
# poor sentence. **Beam search** keeps the $K$ best partial translations (*beams*). At each step
# every beam $i$ with total log-probability $s_i$ and every token $w$ make a candidate of score
#
# $$s_i + \log p(w \mid \text{beam}_i, x),$$
#
# and the $K$ best of all $K \cdot V$ candidates survive (**top-$K$ over beams × vocabulary**, not
# per beam). A candidate that ends in `<eos>` is a **finished hypothesis**: it leaves the beam and
# waits, scored with the length penalty of Wu et al. (2016),
#
# $$\mathrm{score}(Y) = \frac{\log P(Y \mid x)}{\mathrm{lp}(Y)}, \qquad
# \mathrm{lp}(Y) = \left(\frac{5 + |Y|}{6}\right)^{\alpha},$$
#
# and the live beams are refilled from the next best candidates. `lib.decode.beam_search` ranks
# the $2K$ best candidates so that $K$ live ones remain even if $K$ candidates end in `<eos>`
# (one per beam at most), and stops a source once it has $K$ finished hypotheses (as fairseq does).
# At the first step only one beam is live (the others have score $-\infty$), otherwise the $K$ copies
# of `<bos>` would fill the beam with the same word.
#
# ## 5. Exercise 2: one step of beam search (5 points)
#
# Write `my_beam_step(scores, log_probs, eos)` for `scores` (B, K), the live beams' total
# log-probabilities, and `log_probs` (B, K, V). Return a `lib.decode.BeamStep` with (B, K) tensors:
#
# * `scores`, `beams`, `tokens`: the $K$ best candidates **not** ending in `eos`, best first
#   (`beams` = which old beam each extends, `tokens` = the appended token);
# * `finished_scores`, `finished_beams`: for $j = 0..K-1$, if the $j$-th best candidate overall ends
#   in `eos`, its score and beam, else $-\infty$ (and any beam index).
#
# Hint: flatten to (B, K·V), take the $2K$ best with `topk`, recover beam and token with `//` and `%`.
# Do not call `lib.decode.beam_step`.

# %% nbgrader={"grade": false, "grade_id": "ex2_beam_step", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_beam_step(scores: Tensor, log_probs: Tensor, eos: int) -> BeamStep:
    """One beam-search step: top-K live continuations and the finished <eos> candidates."""
    ### BEGIN SOLUTION
    B, K, V = log_probs.shape
    cand = (scores[:, :, None] + log_probs).reshape(B, K * V)  # (B, K*V)
    top, idx = cand.topk(2 * K, dim=1)  # (B, 2K), best first
    beams, tokens = idx // V, idx % V  # (B, 2K)
    is_eos = tokens == eos
    finished_scores = torch.where(is_eos[:, :K], top[:, :K], torch.full_like(top[:, :K], -math.inf))
    keep = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]  # first K that are not <eos>
    return BeamStep(top.gather(1, keep), beams.gather(1, keep), tokens.gather(1, keep),
                    finished_scores, beams[:, :K])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex2_beam_step_check", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _beam_reference(scores: Tensor, log_probs: Tensor, eos: int, *, add_scores: bool = True, width: int = 2,
                    set_apart: bool = True) -> BeamStep:
    """lib's beam_step, or one predictable mistake in it (the keywords), written out in plain torch."""
    B, K, V = log_probs.shape
    cand = ((scores[:, :, None] if add_scores else 0) + log_probs).reshape(B, K * V)  # (B, K*V)
    top, idx = cand.topk(width * K, dim=1)  # (B, width*K), best first
    beams, tokens = idx // V, idx % V
    is_eos = tokens == eos
    none = torch.full((B, K), -math.inf)
    if not set_apart:
        return BeamStep(top[:, :K], beams[:, :K], tokens[:, :K], none, torch.zeros(B, K, dtype=torch.long))
    finished = torch.where(is_eos[:, :K], top[:, :K], none)
    keep = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]  # the first K not ending in <eos>
    return BeamStep(top.gather(1, keep), beams.gather(1, keep), tokens.gather(1, keep), finished, beams[:, :K])


def _same_step(a: BeamStep, b: BeamStep) -> bool:
    """Equal live scores, beams and tokens (where live), and the same finished candidates."""
    if any(getattr(a, f).shape != getattr(b, f).shape for f in ("scores", "beams", "tokens", "finished_scores", "finished_beams")):
        return False
    live, fin = b.scores > -math.inf, b.finished_scores > -math.inf
    return (torch.allclose(a.scores, b.scores) and torch.equal(a.beams[live], b.beams[live])
            and torch.equal(a.tokens[live], b.tokens[live]) and torch.allclose(a.finished_scores, b.finished_scores)
            and torch.equal(a.finished_beams[fin], b.finished_beams[fin]))


def _beam_mistakes(scores: Tensor, log_probs: Tensor, eos: int) -> dict[str, BeamStep]:
    """Wrong versions a learner is likely to write, each the reference with one mistake."""
    B, K, V = log_probs.shape
    per_beam = (scores[:, :, None] + log_probs).max(dim=-1)  # each beam keeps its own best token
    return {
        "the previous scores are not added (a candidate's score is s_i + log p, not log p)":
            _beam_reference(scores, log_probs, eos, add_scores=False),
        "you took the top K instead of the top 2K candidates: when some of the K best end in <eos>, fewer than K "
        "live ones remain among them, so the live beams must come from the 2K best":
            _beam_reference(scores, log_probs, eos, width=1),
        "finished hypotheses are extended: candidates ending in <eos> stayed among the live beams (set them apart "
        "as finished)": _beam_reference(scores, log_probs, eos, width=1, set_apart=False),
        "the top-K is taken per beam (each beam keeps its own best token) instead of over beams x vocabulary":
            BeamStep(per_beam.values, torch.arange(K).expand(B, K), per_beam.indices, torch.full((B, K), -math.inf),
                     torch.zeros(B, K, dtype=torch.long)),
    }


def check_beam_step(fn, B: int, K: int, V: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(B, K, V, generator=g) * 3, dim=-1)
    log_probs[..., 1] += 1.5  # token 1 is <eos>, and often among the best
    scores = -5 * torch.rand(B, K, generator=g)
    scores[:, 0] = 0.0  # beam 0 is the best beam of every source ...
    log_probs[:, 0, 1] = 0.0  # ... and <eos> its best token: the best candidate of every source is finished
    scores[0, 1:] = -math.inf  # the first step of source 0: one live beam
    ref = beam_step(scores, log_probs, 1)
    got = call_explained(fn, scores, log_probs, 1, name="my_beam_step(scores, log_probs, eos)",
                         hint=f"scores is (B, K) = {(B, K)}, log_probs (B, K, V) = {(B, K, V)}: add scores[:, :, None], "
                              "flatten to (B, K*V), take topk(2 * K, dim=1)")
    for name in ("scores", "beams", "tokens", "finished_scores", "finished_beams"):
        field = getattr(got, name)
        if name.startswith("finished") and isinstance(field, Tensor) and field.shape == (B, 2 * K):
            raise AssertionError(f"my_beam_step(...).{name} has 2K = {2 * K} columns: only the K best candidates "
                                 "overall can finish (j = 0..K-1), so it is (B, K)")
        check_shape(field, (B, K), f"my_beam_step(...).{name}")
    if _same_step(got, ref):
        return
    for name, wrong in _beam_mistakes(scores, log_probs, 1).items():
        if _same_step(got, wrong):
            raise AssertionError(f"my_beam_step: {name}")
    if not torch.allclose(got.scores, ref.scores):
        if (got.tokens == 1).any():
            raise AssertionError("my_beam_step: a live beam ends in <eos>; <eos> candidates are finished, not live")
        check_close(got.scores, ref.scores, "live scores")
    live = ref.scores > -math.inf
    if not (torch.equal(got.beams[live], ref.beams[live]) and torch.equal(got.tokens[live], ref.tokens[live])):
        raise AssertionError("my_beam_step: the live scores are right but beams/tokens are not: "
                             "beam = flat index // V, token = flat index % V")
    if not torch.equal(got.finished_scores == -math.inf, ref.finished_scores == -math.inf):
        raise AssertionError("my_beam_step: the wrong candidates are finished: those of the K best candidates "
                             "overall (not of the 2K, not of the live ones) that end in <eos>")
    fin = ref.finished_scores > -math.inf
    check_close(got.finished_scores[fin], ref.finished_scores[fin], "finished scores")
    if not torch.equal(got.finished_beams[fin], ref.finished_beams[fin]):
        raise AssertionError("my_beam_step: finished_beams must say which beam each finished candidate extends")


check_beam_step(my_beam_step, B=2, K=3, V=7, seed=0)
passed("my_beam_step matches lib.decode.beam_step")

# %% nbgrader={"grade": true, "grade_id": "ex2_beam_step_hidden", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests: more shapes and seeds, without lib's beam_step.
### BEGIN HIDDEN TESTS
from lib.checks import forbid

_ref_step = beam_step
for i, (B, K, V) in enumerate([(1, 1, 4), (3, 4, 11), (2, 5, 6), (4, 2, 50)]):
    with forbid("lib.decode.beam_step"):
        g = torch.Generator().manual_seed(100 + i)
        log_probs = torch.log_softmax(torch.randn(B, K, V, generator=g) * 3, dim=-1)
        log_probs[..., 1] += 1.5
        scores = -5 * torch.rand(B, K, generator=g)
        scores[:, 0], log_probs[:, 0, 1] = 0.0, 0.0  # the best candidate of every source ends in <eos>
        scores[0, 1:] = -math.inf
        got = my_beam_step(scores, log_probs, 1)
    ref = _ref_step(scores, log_probs, 1)
    check_close(got.scores, ref.scores, f"live scores, (B, K, V) = {(B, K, V)}")
    live = ref.scores > -math.inf
    assert torch.equal(got.tokens[live], ref.tokens[live]), f"live tokens differ for (B, K, V) = {(B, K, V)}"
    assert torch.equal(got.beams[live], ref.beams[live]), f"live beams differ for (B, K, V) = {(B, K, V)}"
    fin = ref.finished_scores > -math.inf
    assert torch.equal(got.finished_scores == -math.inf, ~fin), f"finished candidates differ for {(B, K, V)}"
    check_close(got.finished_scores[fin], ref.finished_scores[fin], "finished scores")
    assert torch.equal(got.finished_beams[fin], ref.finished_beams[fin]), "finished beams differ"
passed("hidden tests passed")
### END HIDDEN TESTS

# %% [markdown]
# ## 6. English → French
#
# **Data.** d2l's `fra-eng` (Tatoeba sentence pairs), read through `lib.data` (cache, mirrors,
# checksum) and preprocessed as d2l does: lower case, a space before `, . ! ?`, words split on
# spaces (`lib.translation.preprocess_nmt`). We keep d2l's word-level tokens rather than a subword
# tokenizer: these sentences are short and plain (7 words on average), a word vocabulary of
# words seen at least 5 times covers them (5,982 English and 9,351 French entries, `<pad>`,
# `<unk>`, `<bos>` and `<eos>` included; 2 % of the test sentences' English words and 3 % of their
# references' French words fall outside), and words keep sequences short, which is what a CPU budget needs; the price is `<unk>` for rare words.
#
# **The split is by English sentence.** Many English sentences occur several times with different
# French translations (`you're the teacher .` has 26). Splitting *pairs* at random would put
# some English test sentences into training. `lib.translation.load_fra_eng` shuffles the distinct English sentences with a
# fixed seed and keeps 2,000 for testing, none of which occurs in training; **all** their French
# translations are references for BLEU. The digest of the test sentences identifies the split.

# %%
data = load_fra_eng(num_test=2000, seed=0, min_freq=5, num_train=pick(full=None, quick=2000))
test_n = pick(full=len(data.test_sources), quick=100)
test_sources, test_refs = data.test_sources[:test_n], data.test_references[:test_n]
train_sources = {" ".join(data.src_vocab.decode(s)) for s, _ in data.train}
print(f"test split digest {data.digest[:16]}")
print(f"test: {len(data.test_sources)} English sentences, {len(data.test_indices)} pairs, "
      f"{len(data.test_indices) / len(data.test_sources):.2f} references per sentence")

# %% tags=["nbval-ignore-output"]
print(f"train: {len(data.train):,} pairs; vocabularies: English {len(data.src_vocab):,}, French {len(data.tgt_vocab):,}")
print(f"test sentences that occur in training: {sum(s in train_sources for s in data.test_sources)}")
for en, refs in list(zip(data.test_sources, data.test_references, strict=True))[:3]:
    print(f"  {en!r} -> {refs}")

# %% [markdown]
# **Model and training.** A small post-norm Transformer (2 + 2 layers, $D = 128$, 4 heads,
# $d_\text{ff} = 512$, tied target embedding and output layer, 2.9 M parameters) sized for a CPU:
# the paper's base model has 65 M parameters and trained 12 hours on 8 GPUs. Batches of about
# 2,048 target tokens group sentences of similar length (section 5.1), so there is little padding;
# Adam with $\beta_2 = 0.98$, $\epsilon = 10^{-9}$, the warm-up schedule with a short warm-up
# (300 steps, scaled by 0.6: a peak rate of 0.0031), label smoothing 0.1, dropout 0.1,
# gradients clipped to norm 1.
#
# The budget is a fixed number of updates, **1,600 steps** (about 2.3 epochs), seeded:
# the result does not depend on how busy the machine is, only the time it takes does. It is sized
# so that the whole lesson runs in under 20 minutes on a 2-core CPU; on a GPU the same steps take
# a fraction of that. On a CPU most of the time goes into the output layer ($D \times V$ per target
# token), which is why the vocabularies keep words seen at least 5 times.

# %% tags=["nbval-ignore-output"]
D = 128
TRAIN_STEPS = pick(full=1600, quick=15)
cfg = TransformerConfig(src_vocab_size=len(data.src_vocab), tgt_vocab_size=len(data.tgt_vocab), d_model=D,
                        num_heads=4, d_ff=512, num_encoder_layers=2, num_decoder_layers=2, dropout=0.1,
                        max_len=128, norm_first=False, tie_weights=True, fast=True)
_ = torch.manual_seed(0)
model = Transformer(cfg)
batches = TranslationBatches(data.train, batch_tokens=2048, bos=BOS, seed=0)
opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.98), eps=1e-9)
sched = warmup_schedule(opt, d_model=D, warmup_steps=pick(full=300, quick=10), scale=0.6)
loss_fn = SequenceCrossEntropy(pad=PAD, label_smoothing=0.1)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(batches)} batches per epoch, "
      f"{TRAIN_STEPS} steps ({TRAIN_STEPS / len(batches):.2f} epochs)")

# %% tags=["nbval-ignore-output"]
start = time.perf_counter()
history = fit(model, batches, epochs=math.ceil(TRAIN_STEPS / len(batches)), max_steps=TRAIN_STEPS,
              optimizer=opt, loss_fn=loss_fn, scheduler=sched, scheduler_interval="step", device=dev,
              grad_clip=1.0, seed=0)
train_seconds = time.perf_counter() - start
print(f"trained {len(history.step_loss)} steps ({len(history.step_loss) / len(batches):.2f} epochs) "
      f"in {train_seconds / 60:.1f} min on {dev.type}")

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(6, 3))
_ = ax.plot(history.step_loss)
_ = ax.set(xlabel="step", ylabel="label-smoothed loss", title="Training loss per step")

# %% [markdown]
# ## 7. Decoding and BLEU
#
# Both searches decode incrementally with the key/value cache (`lib.decode`, `use_cache=True`).
#
# **BLEU** (Papineni et al. 2002) scores a set of outputs against their references by counting
# shared word sequences. For $n = 1, \dots, 4$, the *modified $n$-gram precision* $p_n$ is the
# fraction of the outputs' $n$-grams that occur in a reference of their sentence, each counted at
# most as often as it occurs there (so `le le le le` does not score by repeating a common word),
# pooled over the whole test set. Precision alone would reward short outputs (a two-word output of
# two right words is perfectly precise), so a **brevity penalty** multiplies the geometric mean:
#
# $$\mathrm{BLEU} = \mathrm{BP} \cdot \exp\Big(\tfrac14 \sum_{n=1}^{4} \log p_n\Big), \qquad
# \mathrm{BP} = \min\big(1,\ e^{\,1 - r/c}\big),$$
#
# with $c$ the outputs' total length and $r$ the references' (per sentence, the reference closest
# in length). The *length ratio* $c / r$ printed below says how the penalty acts: at or above 1
# there is none; at 0.9 it costs a factor $e^{1 - 1/0.9} \approx 0.89$. Scores are given ×100.
# Here BLEU is sacreBLEU's corpus BLEU over the whole test split, with every French translation of a
# test sentence as a reference; its signature says exactly how it was computed. The text on both
# sides is d2l's preprocessing (lower case, spaced punctuation), which sacreBLEU's `13a` tokenizer
# leaves as it is; the scores are therefore *case-insensitive* BLEU and not comparable with
# published cased newstest scores.

# %% tags=["nbval-ignore-output"]
def translate(sentences: list[str], *, beam: int = 1, alpha: float = 0.6, batch_size: int = 250,
              use_cache: bool = True) -> list[str]:
    """English sentences -> French, by greedy search (beam=1) or beam search, in batches."""
    out = []
    model.to(dev)
    for i in range(0, len(sentences), batch_size):
        src, src_lens = pad_batch([data.encode_source(s) or [UNK] for s in sentences[i:i + batch_size]])
        src, src_lens = src.to(dev), src_lens.to(dev)
        max_len = src.shape[1] + 10
        if beam == 1:
            dec = greedy_decode(model, src, src_lens, bos=BOS, eos=EOS, max_len=max_len, use_cache=use_cache)
        else:
            dec = beam_search(model, src, src_lens, bos=BOS, eos=EOS, max_len=max_len, beam_size=beam,
                              alpha=alpha, use_cache=use_cache)
        out += [data.decode_target(t) for t in dec.tokens]
    return out


results, outputs = {}, {}
searches = [("greedy", {"beam": 1}), ("beam k=4, alpha=0.6", {"beam": 4, "alpha": 0.6}),
            ("beam k=4, alpha=1.0", {"beam": 4, "alpha": 1.0}),
            # exercise 3's question: no length penalty, and a wider beam with and without it
            ("beam k=4, alpha=0", {"beam": 4, "alpha": 0.0}), ("beam k=8, alpha=0", {"beam": 8, "alpha": 0.0}),
            ("beam k=8, alpha=0.6", {"beam": 8, "alpha": 0.6})]
for name, kwargs in searches:
    t0 = time.perf_counter()
    outputs[name] = translate(test_sources, **kwargs)
    seconds = time.perf_counter() - t0
    score, signature = corpus_bleu(outputs[name], test_refs)
    results[name] = {"BLEU": round(score.score, 1), "length ratio": round(score.sys_len / score.ref_len, 3),
                     "decode s": round(seconds, 1)}

# %% tags=["nbval-ignore-output"]
print(f"sacreBLEU signature: {signature}")
print(f"test set: {len(test_sources)} English sentences, {sum(len(r) for r in test_refs)} references")
pd.DataFrame(results).T

# %% [markdown]
# In the stored full-mode run greedy search reaches 36.7 BLEU and beam search with $K = 4$ 37.9
# ($\alpha = 0.6$) and 38.3 ($\alpha = 1.0$): the wider search gains 1.2 to 1.6 points, for six to
# eight times the decoding time (the seconds come from a machine shared with other jobs). The
# *length ratio* is the output length over the reference length that BLEU uses (the closest
# reference per sentence); below 1 BLEU's brevity penalty applies. Greedy's outputs are 1.7 %
# longer than the references, beam search's 1.6 % shorter at $\alpha = 0.6$ and 0.4 % at
# $\alpha = 1.0$: a larger $\alpha$ favours longer hypotheses.
#
# The last three rows are exercise 3's evidence. Without a length penalty ($\alpha = 0$) the outputs
# shrink, 3.4 % below the references with $K = 4$ and 5.4 % with $K = 8$, and BLEU falls to 37.4 and
# 37.3: the wider beam finds *more* short hypotheses, not better translations. With the penalty the
# wider beam is no worse ($K = 8$, $\alpha = 0.6$: 38.0, outputs 2.8 % short) but no better than
# $K = 4$ either. (Quick mode trains for 15 steps only, so its table shows BLEU near 0.)
#
# **Cached against uncached decoding.** The cache changes the cost, not the result:

# %% tags=["nbval-ignore-output"]
some = test_sources[:200]
timings = {}
for use_cache in (True, False):
    t0 = time.perf_counter()
    timings[use_cache] = (translate(some, use_cache=use_cache), time.perf_counter() - t0)
print(f"greedy on {len(some)} sentences: cached {timings[True][1]:.1f} s, recomputing the prefix "
      f"{timings[False][1]:.1f} s ({timings[False][1] / timings[True][1]:.1f}x)")

# %%
print("identical outputs:", timings[True][0] == timings[False][0])

# %% [markdown]
# d2l's four example sentences. Three of them are training pairs (`fra.txt` has one translation
# of each); `he's calm .` is not in `fra.txt` at all, so it is a fair test of a sentence the model
# has never seen:

# %% tags=["nbval-ignore-output"]
examples = ["go .", "i lost .", "he's calm .", "i'm home ."]
train_pairs = {}
for s, t in data.train:
    train_pairs.setdefault(" ".join(data.src_vocab.decode(s)), data.decode_target(t))
for en, greedy_fr, beam_fr in zip(examples, translate(examples), translate(examples, beam=4), strict=True):
    print(f"{en:12} greedy: {greedy_fr:24} beam: {beam_fr:24} training pair: {train_pairs.get(en, '(none)')}")

# %% [markdown]
# In the stored run all four come out right, by both searches. `he's calm .`, never seen, becomes
# `il est calme .`; `go .` becomes `allez !` and `i'm home .` `je suis à la maison .`, correct
# translations other than their training pairs `va !` and `je suis chez moi .`. For comparison, d2l's Transformer (512 training pairs)
# translates `go .` as `<unk> !` (d2l-en issue #1484).

# %% [markdown]
# ## 8. Cross-attention: where each French word looks
#
# Run the decoder once more over its own output (teacher forcing on the translation) with a
# `Record(need_weights=True)`: every attention call appends its weights, in order
# (the encoder's self-attentions, then per decoder block its self-attention and cross-attention). We plot the last block's cross-attention
# averaged over heads: rows are generated words, columns source words. Each panel has its own
# colour scale, from 0 to its largest weight (its colour bar); compare shades within a panel.

# %% tags=["nbval-ignore-output"]
def cross_attention(en: str) -> tuple[list[str], list[str], Tensor]:
    src_ids = torch.tensor([data.encode_source(en)], device=dev)
    fr = translate([en], beam=4)[0]
    tgt_ids = [BOS, *data.tgt_vocab.encode(fr.split())]
    rec = Record(need_weights=True)
    model.eval()
    with torch.no_grad():
        model(src_ids, torch.tensor([tgt_ids], device=dev), record=rec)
    cross = rec.weights[-1][0].mean(0)  # (T, S): the last block's cross-attention, mean over heads
    return en.split(), fr.split() + ["<eos>"], cross.cpu()


fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, en in zip(axes, ["i'm very happy to see you .", "where is the train station ?", "he has two cats ."],
                  strict=True):
    src_words, tgt_words, w = cross_attention(en)
    image = ax.imshow(w, cmap="Reds", vmin=0)  # each panel from 0 to its own largest weight
    _ = fig.colorbar(image, ax=ax, shrink=0.8)
    _ = ax.set_xticks(range(len(src_words)), src_words, rotation=60)
    _ = ax.set_yticks(range(len(tgt_words)), tgt_words)
    _ = ax.set(xlabel="source (English)", ylabel="output (French)")
fig.suptitle("Cross-attention of the last decoder block (mean over heads)")
fig.tight_layout()

# %% [markdown]
# In the stored run the alignment is mostly monotone, as the two languages order these words
# alike: `deux` looks at `two`, `chats` at `cats`, `heureux` at `happy`, the final `.` and `?` at
# their English twins. Where the languages differ the weights follow the meaning, not the
# position: `gare` (one word) looks at `station` of *train station*; in `se trouve` (*is located*,
# no word-for-word twin) `se` looks mostly at `is`, and `trouve` spreads its weight over the whole
# sentence, the largest part on `train`; in `te voir` (*see you*, the pronoun first)
# `voir` looks at `see` and `te` at `see` and `you`. Nothing told the model which words
# correspond; the alignment is a by-product of learning to translate (Bahdanau et al. 2015 showed the same for recurrent models).

# %% [markdown]
# ## 9. Exercise 3: why beam search needs a length penalty (2 points, graded by hand)
#
# Explain why beam search that ranks finished hypotheses by their total log-probability
# $\log P(Y \mid x)$ alone (no length penalty, $\alpha = 0$) prefers short outputs, why a *wider*
# beam makes this worse rather than better, and how dividing by $\mathrm{lp}(Y)$ counters it.

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex3_written", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# ### BEGIN SOLUTION
# $\log P(Y \mid x) = \sum_t \log p(y_t \mid y_{<t}, x)$ is a sum of terms that are all $\le 0$:
# every additional token can only lower the score. A hypothesis that stops early (emits `<eos>`)
# has fewer negative terms, so unless the model is very sure of every extra word, the shorter
# hypothesis scores higher, even when it is an incomplete translation. Greedy search is partly
# protected by its own myopia (it emits `<eos>` only when `<eos>` is the best next token); a
# wider beam explores more hypotheses, so it is more likely to find some early `<eos>` whose
# total probability beats every complete translation: the search finds the model's
# (length-biased) optimum better, and that optimum is too short (Koehn & Knowles 2017; Stahlberg &
# Byrne 2019 show the empty output is often the single most probable one). Dividing by
# $\mathrm{lp}(Y) = ((5+|Y|)/6)^\alpha$, which grows with the length, turns the sum into roughly a
# per-token average for $\alpha \to 1$: long hypotheses are no longer punished for their length, and
# $\alpha$ between 0.6 and 1 trades the two off (Wu et al. 2016). BLEU's brevity penalty is what
# makes the short outputs cost so much in the score. The table of section 7 shows both effects:
# with $\alpha = 0$ the outputs are 3.4 % shorter than the references at $K = 4$ and 5.4 % at $K = 8$,
# against 1.6 % and 2.8 % at $\alpha = 0.6$.
# ### END SOLUTION

# %% [markdown]
# ## Summary
#
# * The decoder block adds masked self-attention (lower triangle with the diagonal, plus key
#   padding) and cross-attention to the encoder's memory; training feeds the shifted reference
#   (teacher forcing), inference feeds the model's own output back, one token at a time.
# * A key/value cache makes each decoding step feed one token; the outputs are identical.
# * Beam search ranks candidates over beams × vocabulary, sets `<eos>` candidates apart, and
#   needs a length penalty.
# * BLEU comes from sacreBLEU on a test split that shares no English sentence with training,
#   with all references; its signature is printed beside the score.
