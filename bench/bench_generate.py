"""Generating text with a decoder-only model: lib's key/value cache, lib recomputing the prefix, and transformers.

    python bench/bench_generate.py               # lesson 11's model size, 256 and 1,024 new tokens, 4 prompts
    python bench/bench_generate.py --quick       # a small configuration, to check that it runs
    python bench/bench_generate.py --device cpu  # force a device (default: lib.runtime.device())

Without a cache, step t feeds the t tokens so far through every block: N new tokens cost
about N²/2 token passes.  With the cache (``lib.decode.generate(..., use_cache=True)``) each
step feeds one token whose query attends to the cached keys and values: N token passes, plus
the per-step overhead that both share (Python, the output layer, the sampling).  The reference
is Hugging Face's ``LlamaForCausalLM.generate`` with its own cache, on the same weights: the
model is built by ``transformers`` from a config of lesson 11's sizes (random weights, no
download) and converted with ``lib.gpt.gpt_from_hf_llama``.  Greedy decoding, so the three
must produce identical tokens (checked); all three are timed side by side, round-robin
(``lib.runtime.time_steps``, median of ``--repeats``).
"""

from __future__ import annotations

import argparse

import torch

from lib.decode import generate
from lib.gpt import GPTConfig, gpt_from_hf_llama
from lib.runtime import device, time_steps


def hf_llama_like(c: GPTConfig, context_len: int):  # noqa: ANN201 - transformers.LlamaForCausalLM
    """A random ``LlamaForCausalLM`` with the sizes of ``c`` (RMSNorm, SwiGLU, RoPE, tied, no biases)."""
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.hidden_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
        head_dim=c.head_size, max_position_embeddings=context_len, rms_norm_eps=c.eps, rope_theta=c.rope_base,
        tie_word_embeddings=c.tie_weights, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        initializer_range=0.2)  # logits far apart: greedy choices are no near-ties that float noise could flip
    return transformers.LlamaForCausalLM(cfg).eval()


def compare(c: GPTConfig, lengths: tuple[int, ...], *, batch: int = 4, prompt_len: int = 16, repeats: int = 1,
            dev: torch.device | None = None) -> list[dict[str, float]]:
    """Milliseconds of lib cached, lib uncached and transformers for each number of new tokens; checks the tokens."""
    dev = dev if dev is not None else device()
    torch.manual_seed(0)
    hf = hf_llama_like(c, prompt_len + max(lengths)).to(dev)
    ours = gpt_from_hf_llama(hf, fast=True).to(dev)
    prompt = torch.randint(1, c.vocab_size, (batch, prompt_len), device=dev)
    rows = []
    for n in lengths:
        steps = {
            "cached": lambda n=n: generate(ours, prompt, n, temperature=0.0, use_cache=True),
            "uncached": lambda n=n: generate(ours, prompt, n, temperature=0.0, use_cache=False),
            "transformers": lambda n=n: hf.generate(prompt, max_new_tokens=n, do_sample=False, use_cache=True),
        }
        outs = {name: step() for name, step in steps.items()}
        if not (torch.equal(outs["cached"], outs["uncached"]) and torch.equal(outs["cached"], outs["transformers"])):
            raise SystemExit(f"the three generations differ at {n} new tokens")
        ms = time_steps(steps, dev, warmup=0, repeats=repeats)  # the check above was the warm-up
        rows.append({"new tokens": n, **{f"{k} ms": v for k, v in ms.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: lib.runtime.device())")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per variant (median)")
    parser.add_argument("--batch", type=int, default=4, help="prompts generated at once")
    args = parser.parse_args()
    dev = device(args.device) if args.device else device()
    if args.quick:
        c, lengths, repeats = GPTConfig(vocab_size=65, d_model=32, num_layers=1, num_heads=2), (16, 32), 1
    else:  # lesson 11's model
        c = GPTConfig(vocab_size=65, d_model=128, num_layers=4, num_heads=4, n_kv_heads=2)
        lengths, repeats = (256, 1024), args.repeats
    print(f"device {dev.type}, {torch.get_num_threads()} threads; d_model {c.d_model}, {c.num_layers} layers, "
          f"{c.num_heads} heads ({c.kv_heads} key/value heads), vocabulary {c.vocab_size}, batch {args.batch}, "
          "prompts of 16 tokens, greedy")
    print(f"{'new tokens':>10} {'cached ms':>10} {'uncached ms':>12} {'transformers ms':>16} "
          f"{'uncached/cached':>16} {'transformers/cached':>20}")
    for r in compare(c, lengths, batch=args.batch, repeats=repeats, dev=dev):
        print(f"{r['new tokens']:>10} {r['cached ms']:>10.0f} {r['uncached ms']:>12.0f} {r['transformers ms']:>16.0f} "
              f"{r['uncached ms'] / r['cached ms']:>15.1f}x {r['transformers ms'] / r['cached ms']:>19.2f}x")


if __name__ == "__main__":
    main()
