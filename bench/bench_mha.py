"""Multi-head attention, forward + backward: lib's explicit and fast paths vs torch.nn.MultiheadAttention.

    python bench/bench_mha.py            # (B=16, T=256, D=512, H=8) and (B=4, T=1024, D=512, H=8)
    python bench/bench_mha.py --quick    # a tiny configuration, to check that it runs
    COURSE_DEVICE=cpu python bench/bench_mha.py   # force a device

Every variant has the same weights and does self-attention on the same input
(batch-first). Variants are timed round-robin (one call of each per round), so
background load hits them alike; the table shows the median over the rounds and
the ratio to torch.nn.MultiheadAttention (< 1 = faster than torch). torch's
module is called with ``need_weights=False`` so that it, too, can use the fused
``scaled_dot_product_attention`` kernel (its default, ``need_weights=True``,
materialises the weights).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.interop import mha_from_torch  # noqa: E402
from lib.runtime import device, seed_everything, time_steps  # noqa: E402


def variants(D: int, H: int, dev: torch.device, dtype: torch.dtype) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    ref = nn.MultiheadAttention(D, H, batch_first=True).to(dev, dtype)
    explicit = mha_from_torch(ref).to(dev, dtype)
    fast = mha_from_torch(ref, fast=True).to(dev, dtype)
    fused = mha_from_torch(ref, fast=True, fused_qkv=True).to(dev, dtype)
    return {
        "lib explicit": lambda x: explicit(x),
        "lib fast": lambda x: fast(x),
        "lib fast + fused_qkv": lambda x: fused(x),
        "torch.nn.MultiheadAttention": lambda x: ref(x, x, x, need_weights=False)[0],
    }


def step(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    out = fn(x)
    out.sum().backward()
    x.grad = None


def bench(B: int, T: int, D: int, H: int, dev: torch.device, dtype: torch.dtype, warmup: int, repeats: int) -> dict[str, float]:
    seed_everything(0)
    fns = variants(D, H, dev, dtype)
    x = torch.randn(B, T, D, device=dev, dtype=dtype, requires_grad=True)
    with torch.no_grad():  # same numbers from every variant
        outs = {name: fn(x) for name, fn in fns.items()}
    ref = outs["torch.nn.MultiheadAttention"]
    for name, out in outs.items():
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        if not torch.allclose(out, ref, atol=tol, rtol=tol):
            raise SystemExit(f"{name} disagrees with torch.nn.MultiheadAttention: max diff {(out - ref).abs().max():.3g}")
    return time_steps({name: (lambda fn=fn: step(fn, x)) for name, fn in fns.items()}, dev,
                      warmup=warmup, repeats=repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one tiny configuration")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args(argv)
    dev = device()
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type} ({torch.get_num_threads()} threads)"
    print(f"device: {name}   torch {torch.__version__}   dtype {args.dtype}   forward + backward, self-attention")
    configs = [(2, 16, 32, 4)] if args.quick else [(16, 256, 512, 8), (4, 1024, 512, 8)]
    repeats = args.repeats or (3 if args.quick else 10)
    header = f"{'config':<26} {'variant':<28} {'median ms':>10} {'vs torch':>9}"
    print(header)
    print("-" * len(header))
    for B, T, D, H in configs:
        ms = bench(B, T, D, H, dev, dtype, args.warmup, repeats)
        base = ms["torch.nn.MultiheadAttention"]
        label = f"B={B} T={T} D={D} H={H}"
        for variant, t in ms.items():
            print(f"{label:<26} {variant:<28} {t:>10.2f} {t / base:>8.2f}x")
            label = ""
    print(f"(median of {repeats} round-robin repeats after {args.warmup} warm-up rounds; ratio < 1 = faster than torch)")


if __name__ == "__main__":
    main()
