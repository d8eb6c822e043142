"""Lessons 06–12: the visible check of every exercise names the mistakes a learner plausibly makes.

Each case below *plants* one mistake: it replaces the exercise's solution cell by a wrong answer
(written as a learner would write it), runs the lesson's first cell, the cells the check needs and
the visible check cell in one namespace, and asserts that the check fails with a message that
names the mistake in plain words. The correct answer (the solution cell itself) must pass, and an
untouched answer (``raise NotImplementedError``) must fail with ``NotImplementedError``.

After a failed check the lesson's later cells fall back to lib's version
(``lib.checks.yours_or_reference(..., check=...)``); ``test_fallback_*`` runs those cells with a
planted mistake and asserts the notice and that the rest runs with the reference.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.nbtool import from_text  # noqa: E402


def _cells(lesson: str) -> list[dict]:
    nb = from_text((ROOT / "solutions" / lesson / f"{lesson}.py").read_text(encoding="utf-8"))
    return [c for c in nb.cells if c.cell_type == "code"]


def _by_grade_id(cells: list[dict], grade_id: str) -> str:
    for c in cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return c.source
    raise KeyError(f"no cell with grade_id {grade_id!r}")


def _containing(cells: list[dict], marker: str) -> str:
    """The plain code cell that contains ``marker``; ``"id:GRADE_ID"`` names an exercise cell instead."""
    if marker.startswith("id:"):
        return _by_grade_id(cells, marker[3:])
    found = [c.source for c in cells if marker in c.source and not c.metadata.get("nbgrader")]
    assert len(found) == 1, f"{len(found)} plain code cells contain {marker!r}"
    return found[0]


@dataclass(frozen=True)
class Exercise:
    lesson: str
    answer_id: str  # the solution cell the plant replaces
    check_id: str  # the visible check cell
    setup: tuple[str, ...] = ()  # markers of plain code cells the check needs, in order ("id:..." an exercise cell)


def run_check(ex: Exercise, answer: str | None, monkeypatch) -> str | None:
    """Run the check on ``answer`` (None: the solution); the failure's message, or None when it passes."""
    monkeypatch.setenv("COURSE_QUICK", "1")
    cells = _cells(ex.lesson)
    ns: dict = {"__name__": "__lesson__"}
    exec(compile(cells[0].source, f"<{ex.lesson} first cell>", "exec"), ns)
    for marker in ex.setup:
        exec(compile(_containing(cells, marker), f"<{ex.lesson} {marker}>", "exec"), ns)
    source = _by_grade_id(cells, ex.answer_id) if answer is None else textwrap.dedent(answer)
    exec(compile(source, f"<{ex.lesson} answer>", "exec"), ns)
    try:
        exec(compile(_by_grade_id(cells, ex.check_id), f"<{ex.lesson} check>", "exec"), ns)
    except AssertionError as err:
        return str(err)
    return None


def assert_named(ex: Exercise, answer: str, words: str, monkeypatch) -> None:
    message = run_check(ex, answer, monkeypatch)
    assert message is not None, "the check passed a wrong answer"
    assert words.lower() in message.lower(), f"the check did not name the mistake: {message!r}"


def _blank(answer_id_source: str) -> str:
    """The solution cell with each solution region replaced by nbgrader's stub."""
    out, skipping = [], False
    for line in answer_id_source.splitlines():
        if "### BEGIN SOLUTION" in line:
            out.append(line.replace("### BEGIN SOLUTION", "raise NotImplementedError()"))
            skipping = True
        elif "### END SOLUTION" in line:
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out)


EXERCISES: dict[str, Exercise] = {}
PLANTS: list[tuple[str, str, str, str]] = []  # (exercise, mistake, answer source, words the check must say)


def plant(exercise: str, mistake: str, words: str, answer: str) -> None:
    PLANTS.append((exercise, mistake, answer, words))


# ---------------------------------------------------------------- 06, exercise 1: masked mean pooling
EXERCISES["06.1"] = Exercise("06_transformer_encoder", "ex1_masked_mean_pool", "ex1_masked_mean_pool_check")
_POOL = "def masked_mean_pool(x, keep):\n{}\n"
plant("06.1", "no mask: the plain mean over T", "without the mask", _POOL.format("    return x.mean(1)"))
plant("06.1", "divides by T", "divided by t instead of the number of real tokens", _POOL.format(
    "    return (x * keep.unsqueeze(-1)).sum(1) / x.shape[1]"))
plant("06.1", "sums instead of averaging", "summed, not averaged", _POOL.format(
    "    return (x * keep.unsqueeze(-1)).sum(1)"))
plant("06.1", "mask inverted", "mask inverted", _POOL.format(
    "    w = (~keep).unsqueeze(-1).to(x.dtype)\n    return (x * w).sum(1) / w.sum(1).clamp(min=1)"))
plant("06.1", "an empty row divides by zero (NaN)", "a row with no real token", _POOL.format(
    "    w = keep.unsqueeze(-1).to(x.dtype)\n    return (x * w).sum(1) / w.sum(1)"))
plant("06.1", "keep without its feature axis: a broadcast error", "keep[..., None]", _POOL.format(
    "    return (x * keep).sum(1) / keep.sum(1, keepdim=True)"))
plant("06.1", "the mask as float32 turns a float64 x into float32", "dtype", _POOL.format(
    "    w = keep.unsqueeze(-1).float()\n    return (x * w).sum(1).float() / w.sum(1).clamp(min=1)"))

# ---------------------------------------------------------------- 07, exercise 1: the decoder's mask
EXERCISES["07.1"] = Exercise("07_transformer_decoder", "ex1_decoder_mask", "ex1_decoder_mask_check",
                             setup=("block = DecoderBlock(16, 2, 32",))
_MASK = """
def decoder_self_mask(valid_lens, T):
    t = torch.arange(T)
{}
"""
plant("07.1", "mask inverted", "inverted", _MASK.format(
    "    return ~((t[None, :] <= t[:, None])[None, None] & (t[None, :] < valid_lens[:, None])[:, None, None, :])"))
plant("07.1", "diagonal excluded (j < t)", "diagonal is excluded", _MASK.format(
    "    return (t[None, :] < t[:, None])[None, None] & (t[None, :] < valid_lens[:, None])[:, None, None, :]"))
plant("07.1", "causal part transposed (j >= t)", "transposed", _MASK.format(
    "    return (t[None, :] >= t[:, None])[None, None] & (t[None, :] < valid_lens[:, None])[:, None, None, :]"))
plant("07.1", "no padding part", "padding part is missing", _MASK.format(
    "    return (t[None, :] <= t[:, None])[None, None].expand(len(valid_lens), 1, T, T)"))
plant("07.1", "padding on the queries", "queries instead of the keys", _MASK.format(
    "    return (t[None, :] <= t[:, None])[None, None] & (t < valid_lens[:, None])[:, None, :, None]"))
plant("07.1", "padding off by one (j <= valid_len)", "padding part is off by one", _MASK.format(
    "    return (t[None, :] <= t[:, None])[None, None] & (t[None, :] <= valid_lens[:, None])[:, None, None, :]"))
plant("07.1", "no head axis: (B, T, T)", "head axis", _MASK.format(
    "    return (t[None, :] <= t[:, None])[None] & (t[None, :] < valid_lens[:, None])[:, None, :]"))
plant("07.1", "an int mask", "boolean", _MASK.format(
    "    return ((t[None, :] <= t[:, None])[None, None] & (t[None, :] < valid_lens[:, None])[:, None, None, :]).int()"))
plant("07.1", "torch.tril, which the text forbids", "torch.tril", _MASK.format(
    "    c = torch.tril(torch.ones(T, T, dtype=torch.bool))\n"
    "    return c[None, None] & (t[None, :] < valid_lens[:, None])[:, None, None, :]"))

# ---------------------------------------------------------------- 07, exercise 2: one beam step
EXERCISES["07.2"] = Exercise("07_transformer_decoder", "ex2_beam_step", "ex2_beam_step_check")
_BEAM = """
def my_beam_step(scores, log_probs, eos):
    B, K, V = log_probs.shape
    cand = ({cand}).reshape(B, K * V)
    top, idx = cand.topk({width} * K, dim=1)
    beams, tokens = idx {div} V, idx % V
    is_eos = tokens == eos
    finished_scores = torch.where(is_eos[:, :{fin}], top[:, :{fin}], torch.full_like(top[:, :{fin}], -math.inf))
    keep = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]
    return BeamStep(top.gather(1, keep), beams.gather(1, keep), tokens.gather(1, keep),
                    finished_scores, beams[:, :{fin}])
"""
_RIGHT = dict(cand="scores[:, :, None] + log_probs", width=2, div="//", fin="K")
plant("07.2", "previous scores not added", "previous scores are not added",
      _BEAM.format(**{**_RIGHT, "cand": "log_probs"}))
plant("07.2", "top K instead of 2K", "top k instead of the top 2k", _BEAM.format(**{**_RIGHT, "width": 1}))
plant("07.2", "beam index as idx % K", "beam = flat index // v", _BEAM.format(**{**_RIGHT, "div": "% K + 0 *"}))
plant("07.2", "finished among the 2K", "finished", _BEAM.format(**{**_RIGHT, "fin": "2 * K"}))
plant("07.2", "top-K per beam", "per beam", """
def my_beam_step(scores, log_probs, eos):
    B, K, V = log_probs.shape
    top, tok = (scores[:, :, None] + log_probs).max(-1)
    return BeamStep(top, torch.arange(K).expand(B, K), tok, torch.full((B, K), -math.inf), torch.zeros(B, K, dtype=torch.long))
""")
plant("07.2", "<eos> candidates kept live", "ending in <eos> stayed among the live beams", """
def my_beam_step(scores, log_probs, eos):
    B, K, V = log_probs.shape
    top, idx = (scores[:, :, None] + log_probs).reshape(B, K * V).topk(K, dim=1)
    return BeamStep(top, idx // V, idx % V, torch.full((B, K), -math.inf), torch.zeros(B, K, dtype=torch.long))
""")

# ---------------------------------------------------------------- 08, exercise 1: patchify, patch embedding
EXERCISES["08.1"] = Exercise("08_vision_transformer", "ex1_patchify", "ex1_patchify_check")
_PATCH = """
def my_patchify(x, P):
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // P, P, W // P, P)
    return x.permute({perm}).reshape(B, (H // P) * (W // P), C * P * P)


def my_patch_embed(x, pe):
    P = {P}
    E = pe.proj.weight.reshape(pe.proj.out_channels, -1)
    return my_patchify(x, P) @ {E} {bias}
"""
_OK = dict(perm="0, 2, 4, 1, 3, 5", P="pe.patch_size[0]", E="E.T", bias="+ pe.proj.bias")
plant("08.1", "grid axes swapped (column by column)", "column by column", _PATCH.format(**{**_OK, "perm": "0, 4, 2, 1, 3, 5"}))
plant("08.1", "channels last in each patch", "(p, p, c) order", _PATCH.format(**{**_OK, "perm": "0, 2, 4, 3, 5, 1"}))
plant("08.1", "the two P axes swapped", "inside each patch are swapped", _PATCH.format(**{**_OK, "perm": "0, 2, 4, 1, 5, 3"}))
plant("08.1", "no permute", "without the permute", _PATCH.format(**{**_OK, "perm": "0, 1, 2, 3, 4, 5"}))
plant("08.1", "bias missing", "bias is missing", _PATCH.format(**{**_OK, "bias": ""}))
plant("08.1", "E not transposed: a matmul error", "transpose", _PATCH.format(**{**_OK, "E": "E"}))
plant("08.1", "pe.patch_size used as a number", "patch_size is a tuple", _PATCH.format(**{**_OK, "P": "pe.patch_size"}))

# ---------------------------------------------------------------- 08, exercise 2: class token, positions, pooling
EXERCISES["08.2"] = Exercise("08_vision_transformer", "ex2_tokens", "ex2_tokens_check")
_TOK = """
def embed_tokens(patch_tokens, cls_token, pos):
    B = patch_tokens.shape[0]
{embed}


def mean_pool(z, num_prefix):
{pool}
"""
_OKT = dict(embed="    return torch.cat([cls_token.expand(B, -1, -1), patch_tokens], dim=1) + pos",
            pool="    return z[:, num_prefix:].mean(dim=1)")
plant("08.2", "class token not expanded over the batch", "expand it to (b, 1, d)",
      _TOK.format(**{**_OKT, "embed": "    return torch.cat([cls_token, patch_tokens], dim=1) + pos"}))
plant("08.2", "class token appended at the end", "appended at the end",
      _TOK.format(**{**_OKT, "embed": "    return torch.cat([patch_tokens, cls_token.expand(B, -1, -1)], dim=1) + pos"}))
plant("08.2", "positions not added", "positions are not added",
      _TOK.format(**{**_OKT, "embed": "    return torch.cat([cls_token.expand(B, -1, -1), patch_tokens], dim=1)"}))
plant("08.2", "positions added before prepending", "before adding pos",
      _TOK.format(**{**_OKT, "embed": "    return torch.cat([cls_token.expand(B, -1, -1), patch_tokens + pos], dim=1)"}))
plant("08.2", "mean over the feature axis", "feature axis", _TOK.format(**{**_OKT, "pool": "    return z[:, num_prefix:].mean(dim=2)"}))
plant("08.2", "class token included in the mean", "included the class token", _TOK.format(**{**_OKT, "pool": "    return z.mean(dim=1)"}))
plant("08.2", "the last token skipped instead of the first", "skipped the last", _TOK.format(
    **{**_OKT, "pool": "    return z[:, : z.shape[1] - num_prefix].mean(dim=1)"}))

# ---------------------------------------------------------------- 09, exercise 1: Dense Synthesizer weights
EXERCISES["09.1"] = Exercise("09_synthesizer", "ex1_dense_weights", "ex1_dense_weights_check")
_DENSE = """
def dense_synthesizer_weights(x, W_1, b_1, W_2, b_2, mask=None):
    B, T, _ = x.shape
    H, Dh, L = W_2.shape
    hidden = {hidden}
    hidden = {heads}
    logits = hidden @ {W2} + {b2}
    return {soft}
"""
_OKD = dict(hidden="torch.relu(x @ W_1 + b_1)", heads="hidden.view(B, T, H, Dh).transpose(1, 2)",
            W2="W_2[:, :, :T]", b2="b_2[:, None, :T]", soft="masked_softmax(logits, mask)")
plant("09.1", "softmax over the queries", "over the queries", _DENSE.format(
    **{**_OKD, "soft": "masked_softmax(logits.transpose(-1, -2), None if mask is None else mask.transpose(-1, -2)).transpose(-1, -2)"}))
plant("09.1", "no ReLU", "without the relu", _DENSE.format(**{**_OKD, "hidden": "x @ W_1 + b_1"}))
plant("09.1", "heads by a plain view", "split the features", _DENSE.format(**{**_OKD, "heads": "hidden.view(B, H, T, Dh)"}))
plant("09.1", "the mask applied after the softmax", "after the softmax", _DENSE.format(
    **{**_OKD, "soft": "torch.softmax(logits, -1) * (1 if mask is None else mask)"}))
plant("09.1", "mask inverted", "mask inverted", _DENSE.format(
    **{**_OKD, "soft": "masked_softmax(logits, None if mask is None else ~mask)"}))
plant("09.1", "W_2 not sliced to T", "first 7", _DENSE.format(**{**_OKD, "W2": "W_2", "b2": "b_2[:, None, :]"}))
plant("09.1", "b_2 not sliced to T: a broadcast error", "b_2", _DENSE.format(**{**_OKD, "b2": "b_2[:, None, :]"}))
plant("09.1", "-inf fill: NaN on a row with no visible key", "nan", _DENSE.format(
    **{**_OKD, "soft": "torch.softmax(logits if mask is None else logits.masked_fill(~mask, float('-inf')), -1)"}))
plant("09.1", "W_1 used transposed", "w_1 is given as (d, h·dh)", _DENSE.format(**{**_OKD, "hidden": "torch.relu(x @ W_1.T + b_1)"}))

# ---------------------------------------------------------------- 09, exercise 2: Random Synthesizer scores
EXERCISES["09.2"] = Exercise("09_synthesizer", "ex2_random_scores", "ex2_random_scores_check",
                             setup=("def n_params(",))
_RAND = """
class MyRandomScores(nn.Module):
    def __init__(self, num_heads, max_len, trainable=True):
        super().__init__()
        self.max_len = max_len
        R = {init}
{store}

    def forward(self, query, key):
        B, T = query.shape[0], key.shape[1]
{guard}
        return {out}
"""
_OKR = dict(init="torch.randn(num_heads, max_len, max_len)",
            store="        if trainable:\n            self.R = nn.Parameter(R)\n        else:\n            self.register_buffer('R', R)",
            guard="        if T > self.max_len:\n            raise ValueError(f'longer than max_len={self.max_len}')",
            out="self.R[:, :T, :T].unsqueeze(0).expand(B, -1, -1, -1)")
plant("09.2", "R a parameter also when fixed", "register r as a buffer", _RAND.format(**{**_OKR, "store": "        self.R = nn.Parameter(R, requires_grad=trainable)"}))
plant("09.2", "fixed R a plain attribute, not a buffer", "register_buffer", _RAND.format(
    **{**_OKR, "store": "        self.R = nn.Parameter(R) if trainable else R"}))
plant("09.2", "the whole L x L matrix, not the T x T corner", "corner", _RAND.format(**{**_OKR, "out": "self.R.unsqueeze(0).expand(B, -1, -1, -1)"}))
plant("09.2", "no batch axis", "the same r for each example", _RAND.format(**{**_OKR, "out": "self.R[:, :T, :T]"}))
plant("09.2", "no ValueError past max_len", "max_len", _RAND.format(**{**_OKR, "guard": "        pass", "out": "self.R[:, :T, :T].unsqueeze(0).expand(B, -1, -1, -1)"}))
plant("09.2", "R drawn uniform in [0, 1)", "n(0, 1)", _RAND.format(**{**_OKR, "init": "torch.rand(num_heads, max_len, max_len)"}))

# ---------------------------------------------------------------- 10, exercise 1: the online-softmax update
EXERCISES["10.1"] = Exercise("10_attention_cost", "ex1_online_softmax", "ex1_online_softmax_check")
_ONLINE = """
def my_online_softmax_update(m, l, acc, scores, v, mask=None):
    if mask is not None:
        {mask}
    m_new = {m_new}
    m_safe = {safe}
    p = torch.exp(scores - m_safe)
    alpha = torch.exp({alpha})
    return m_new, l * {la} + p.sum(dim=-1, keepdim=True), acc * {aa} + p @ v
"""
_OKO = dict(mask="scores = scores.masked_fill(~mask, -math.inf)", m_new="torch.maximum(m, scores.amax(dim=-1, keepdim=True))",
            safe="torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)", alpha="m - m_safe", la="alpha", aa="alpha")
plant("10.1", "no rescaling", "does not rescale l and acc", _ONLINE.format(**{**_OKO, "la": "1", "aa": "1"}))
plant("10.1", "only l rescaled", "rescales l but not acc", _ONLINE.format(**{**_OKO, "aa": "1"}))
plant("10.1", "rescaled by exp(m_new - m_old)", "exp(m_old - m_new)", _ONLINE.format(**{**_OKO, "alpha": "-(m - m_safe)"}))
plant("10.1", "the maximum of this block only", "running maximum", _ONLINE.format(**{**_OKO, "m_new": "scores.amax(dim=-1, keepdim=True)"}))
plant("10.1", "no guard for m = -inf: NaN", "nan after a fully masked block", _ONLINE.format(**{**_OKO, "safe": "m_new"}))
plant("10.1", "the mask ignored", "masked keys", _ONLINE.format(**{**_OKO, "mask": "pass"}))

# ---------------------------------------------------------------- 10, exercise 2: the backward pass by recomputation
EXERCISES["10.2"] = Exercise("10_attention_cost", "ex2_attention_backward", "ex2_attention_backward_check",
                             setup=("def explicit_grads(",))
_BACK = """
def my_attention_backward(q, k, v, out, lse, dout, block_size):
    scale = 1 / math.sqrt(q.shape[-1])
    delta = (dout * out).sum(dim=-1, keepdim=True)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for j in range(0, k.shape[-2], block_size):
        kb, vb = k[..., j : j + block_size, :], v[..., j : j + block_size, :]
        p = torch.exp(q @ kb.transpose(-2, -1) * {sscale} - {lse})
        dp = dout @ vb.transpose(-2, -1)
        dv[..., j : j + block_size, :] = {pT} @ dout
        ds = p * (dp - {delta})
        {dq}
        dk[..., j : j + block_size, :] = {dsT} @ q * {gscale}
    return dq, dk, dv
"""
_OKB = dict(sscale="scale", lse="lse[..., None]", pT="p.transpose(-2, -1)", delta="delta",
            dq="dq += ds @ kb * scale", dsT="ds.transpose(-2, -1)", gscale="scale")
plant("10.2", "no D term: ds = p * dp", "misses the softmax's term", _BACK.format(**{**_OKB, "delta": "0"}))
plant("10.2", "D from this block's keys only", "this block's keys only",
      _BACK.format(**{**_OKB, "delta": "(p * dp).sum(-1, keepdim=True)"}))
plant("10.2", "dq and dk without the scale", "dq and dk miss the factor",
      _BACK.format(**{**_OKB, "dq": "dq += ds @ kb", "gscale": "1"}))
plant("10.2", "scores recomputed without the scale", "recomputed scores miss the factor", _BACK.format(**{**_OKB, "sscale": "1"}))
plant("10.2", "p without lse: exp(s)", "without subtracting lse", _BACK.format(**{**_OKB, "lse": "0"}))
plant("10.2", "lse without its key axis", "lse[..., none]", _BACK.format(**{**_OKB, "lse": "lse"}))
plant("10.2", "dv = p @ dout", "pᵀ @ dout", _BACK.format(**{**_OKB, "pT": "p"}))
plant("10.2", "dk = ds @ q", "dsᵀ @ q", _BACK.format(**{**_OKB, "dsT": "ds"}))
plant("10.2", "dq overwritten by each block", "only the last block's share",
      _BACK.format(**{**_OKB, "dq": "dq = ds @ kb * scale"}))
plant("10.2", "returns a dict, not the tuple", "return the tuple (dq, dk, dv)",
      _BACK.format(**_OKB).replace("return dq, dk, dv", "return {'dq': dq, 'dk': dk, 'dv': dv}"))


# ---------------------------------------------------------------- 12, exercise 1: a data-parallel step by hand
# (the check runs the planted step on two processes, forked from this one, against DDP on two processes)
EXERCISES["12.1"] = Exercise("12_distributed", "ex1_dp_step", "ex1_dp_step_check", setup=("TOY_BATCH = 12",))
_DP = """
def data_parallel_step(model, optimizer, x, y):
{zero}    loss = F.cross_entropy(model(x), y)
{before}    loss.backward()
    for p in model.parameters():
        {cond}dist.all_reduce({what})
        {divide}
    optimizer.step()
{after}    return {ret}


def train_by_hand(steps=3, seed=0, nprocs=2):
    return launch(data_parallel_run, nprocs, data_parallel_step, steps, seed)
"""
_OKD = dict(zero="    optimizer.zero_grad()\n", before="", cond="", what="p.grad", divide="p.grad /= dist.get_world_size()",
            ret="loss.item()", after="")
plant("12.1", "summed, not averaged", "summed, not averaged", _DP.format(**{**_OKD, "divide": "pass"}))
plant("12.1", "all-reduce before backward()", "stepped with its own gradients", _DP.format(**{
    **_OKD, "before": "    for p in model.parameters():\n        if p.grad is not None:\n            dist.all_reduce(p.grad)\n"
                      "            p.grad /= dist.get_world_size()\n", "cond": "", "what": "torch.zeros(1)",
    "divide": "pass"}))
plant("12.1", "a temporary reduced (p.grad / N), not the gradient", "stepped with its own gradients", _DP.format(**{
    **_OKD, "what": "p.grad / dist.get_world_size()", "divide": "pass"}))
plant("12.1", "biases skipped", "only the weight matrices", _DP.format(**{
    **_OKD, "cond": "if p.dim() < 2:\n            continue\n        "}))
plant("12.1", "gradients never cleared", "without clearing the gradients", _DP.format(**{**_OKD, "zero": ""}))
plant("12.1", "the loss returned as a tensor", "as a float", _DP.format(**{**_OKD, "ret": "loss.detach()"}))
plant("12.1", "the averaged loss returned", "the losses rank", _DP.format(**{
    **_OKD, "after": "    mean = loss.detach().clone()\n    dist.all_reduce(mean)\n    return mean.item() / dist.get_world_size()\n"}))


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_the_solution_passes_and_the_blank_is_unwritten(key, monkeypatch):
    ex = EXERCISES[key]
    assert run_check(ex, None, monkeypatch) is None
    blank = _blank(_by_grade_id(_cells(ex.lesson), ex.answer_id))
    with pytest.raises(NotImplementedError):
        run_check(ex, blank, monkeypatch)


@pytest.mark.parametrize(("key", "mistake", "answer", "words"), PLANTS, ids=[f"{p[0]}: {p[1]}" for p in PLANTS])
def test_the_check_names_the_mistake(key, mistake, answer, words, monkeypatch):
    assert_named(EXERCISES[key], answer, words, monkeypatch)


def test_at_least_four_plausible_mistakes_per_exercise():
    for key in EXERCISES:
        assert sum(p[0] == key for p in PLANTS) >= 4, f"exercise {key}: fewer than four planted mistakes"


# ---------------------------------------------------------------- after a failed check: lib's version, with a notice
# (exercise, a wrong answer that runs, the cells to run after the answer, what the cells must print)
FALLBACKS = [
    ("06.1", _POOL.format("    return x.mean(1)"), (), ("pool = yours_or_reference",),
     "your masked_mean_pool does not pass exercise 1's check yet"),
    ("08.1", _PATCH.format(**{**_OK, "perm": "0, 4, 2, 1, 3, 5"}),
     ("x_train, y_train, x_test, y_test = load_digits_split", "conv_embed = PatchEmbed("),
     ("use_patchify = yours_or_reference",), "your my_patchify does not pass exercise 1's check yet"),
    ("08.2", _TOK.format(**{**_OKT, "pool": "    return z.mean(dim=1)"}),
     ("x_train, y_train, x_test, y_test = load_digits_split",),
     ("yours = yours_or_reference", "logits_with_your_pieces(_model"),
     "your embed_tokens or mean_pool does not pass exercise 2's check yet"),
    ("10.1", _ONLINE.format(**{**_OKO, "la": "1", "aa": "1"}), (), ("update = yours_or_reference",),
     "your my_online_softmax_update does not pass exercise 1's check yet"),
    ("10.2", _BACK.format(**{**_OKB, "delta": "0"}),
     ("id:ex1_online_softmax", "update = yours_or_reference", "def explicit_grads("),
     ("backward = yours_or_reference",), "your my_attention_backward does not pass exercise 2's check yet"),
]


@pytest.mark.parametrize(("key", "answer", "before", "after", "notice"), FALLBACKS, ids=[f[0] for f in FALLBACKS])
def test_after_a_failed_check_the_lesson_goes_on_with_lib(key, answer, before, after, notice, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ex = EXERCISES[key]
    cells = _cells(ex.lesson)
    ns: dict = {"__name__": "__lesson__"}
    exec(compile(cells[0].source, "<first cell>", "exec"), ns)
    ns["P"] = 2  # lesson 08's patch size, set in a plotting cell
    for marker in before:
        exec(compile(_containing(cells, marker), f"<{marker}>", "exec"), ns)
    exec(compile(textwrap.dedent(answer), "<answer>", "exec"), ns)
    for marker in after:  # the fallback cell, then a cell that uses it: no traceback
        exec(compile(_containing(cells, marker), f"<{marker}>", "exec"), ns)
    out = capsys.readouterr().out
    assert notice in out and "this lesson uses the course's reference" in out
    assert "using your" not in out
