"""Greedy decoding with the key/value cache vs recomputing the whole prefix, at several output lengths.

    python bench/bench_decode.py               # lesson 07's model size, outputs of 8..64 tokens
    python bench/bench_decode.py --quick       # a small configuration, to check that it runs
    python bench/bench_decode.py --device cpu  # force a device (default: lib.runtime.device())

Without a cache, step t feeds the t tokens so far through every decoder layer: a
sentence of T tokens costs 1 + 2 + ... + T = T(T+1)/2 token passes (and attention over
t keys at each).  With the cache (``lib.decode``'s ``use_cache=True``) step t feeds one
token whose query attends to the cached keys and values: T token passes.  So the ratio
should grow about linearly with T, less the costs both share (the encoder, the output
layer on the new position, Python overhead per step).  The model is a randomly
initialised ``lib.transformer.Transformer`` whose ``<eos>`` logit is pushed to -inf, so
that every output has exactly the length asked; both paths are timed side by side
(``lib.runtime.time_steps``, round-robin, median) and checked to give the same tokens.
"""

from __future__ import annotations

import argparse

import torch

from lib.decode import greedy_decode
from lib.runtime import device, time_steps
from lib.transformer import Transformer, TransformerConfig

BOS, EOS = 2, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: lib.runtime.device())")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dev = device(args.device) if args.device else device()
    if args.quick:
        d_model, layers, (src_vocab, vocab), batch, lengths, repeats = 32, 1, (100, 100), 4, (4, 8), 2
    else:  # lesson 07's translation model: 2 + 2 layers, its English and French vocabularies
        d_model, layers, (src_vocab, vocab), batch, lengths, repeats = (128, 2, (5982, 9351), 32, (8, 16, 32, 64),
                                                                         args.repeats)
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=src_vocab, tgt_vocab_size=vocab, d_model=d_model, num_heads=4,
                            d_ff=4 * d_model, num_encoder_layers=layers, num_decoder_layers=layers, dropout=0.0,
                            max_len=128, tie_weights=False, fast=True)  # untied: a bias to silence <eos>; same cost
    model = Transformer(cfg).to(dev).eval()
    with torch.no_grad():
        model.decoder.out.bias[EOS] = -float("inf")  # never stop early: outputs of exactly max_len tokens
    src = torch.randint(4, src_vocab, (batch, 12), device=dev)
    mask = torch.full((batch,), 12, device=dev)  # src_valid_lens: every source has 12 tokens
    print(f"device {dev.type}; d_model {d_model}, {layers} + {layers} layers, vocabularies {src_vocab} / {vocab}, "
          f"batch {batch}")
    print(f"{'tokens':>6} {'cached ms':>10} {'uncached ms':>12} {'uncached / cached':>18}")
    for T in lengths:
        a = greedy_decode(model, src, mask, bos=BOS, eos=EOS, max_len=T, use_cache=True).tokens
        b = greedy_decode(model, src, mask, bos=BOS, eos=EOS, max_len=T, use_cache=False).tokens
        if a != b:
            raise SystemExit(f"cached and uncached decoding differ at T={T}")
        ms = time_steps({
            "cached": lambda T=T: greedy_decode(model, src, mask, bos=BOS, eos=EOS, max_len=T, use_cache=True),
            "uncached": lambda T=T: greedy_decode(model, src, mask, bos=BOS, eos=EOS, max_len=T, use_cache=False),
        }, dev, warmup=1, repeats=repeats)
        print(f"{T:>6} {ms['cached']:>10.1f} {ms['uncached']:>12.1f} {ms['uncached'] / ms['cached']:>17.2f}x")


if __name__ == "__main__":
    main()
