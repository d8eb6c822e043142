"""Attention's cost: explicit vs tiled (online softmax) vs torch's SDPA and each of its backends.

    python bench/bench_attention.py                 # B=1, H=8, Dh=64, T = 128 ... 8192, forward, no grad
    python bench/bench_attention.py --quick         # T = 128 ... 512, to check that it runs
    python bench/bench_attention.py --causal        # causal attention (the tiled path skips future blocks)
    python bench/bench_attention.py --min-len 8192 --repeats 1   # one length only
    COURSE_DEVICE=cpu python bench/bench_attention.py

Every variant computes softmax(q kᵀ/√Dh) v on the same (B, H, T, Dh) tensors and is checked
against SDPA first.  Times are medians of round-robin repeats (``lib.runtime.time_steps``), so
background load hits all variants alike; peak memory is what each call allocates above its
inputs: ``lib.memory.measure_peak_bytes`` (every ATen output, live until freed) on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU.  Ratios are against ``F.scaled_dot_product_attention``
with PyTorch's own choice of backend ("sdpa").  On a GPU the last column is the FLOP/s reached
(4·B·H·T²·Dh per forward, halved when causal) as a share of the device's peak for the dtype
(``--peak-tflops`` overrides the small built-in table).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.attention import causal_mask, scaled_dot_product_attention  # noqa: E402
from lib.efficient import tiled_attention  # noqa: E402
from lib.memory import cuda_peak_bytes, measure_peak_bytes  # noqa: E402
from lib.runtime import device, seed_everything, time_steps  # noqa: E402

# Dense peak TFLOP/s from the vendors' data sheets (tensor cores for 16-bit, no sparsity).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3},
    "T4": {"bfloat16": 65.0, "float16": 65.0, "float32": 8.1},
}


def sdpa_backends() -> dict[str, object]:
    """SDPA's backends by name (math, flash, memory-efficient, cuDNN), as ``torch.nn.attention`` knows them."""
    from torch.nn.attention import SDPBackend

    names = {"MATH": "sdpa math", "FLASH_ATTENTION": "sdpa flash", "EFFICIENT_ATTENTION": "sdpa mem-efficient",
             "CUDNN_ATTENTION": "sdpa cuDNN"}
    return {label: getattr(SDPBackend, attr) for attr, label in names.items() if hasattr(SDPBackend, attr)}


def variants(causal: bool, block_size: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    from torch.nn.attention import sdpa_kernel

    def explicit(q, k, v):
        mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device) if causal else None
        return scaled_dot_product_attention(q, k, v, mask=mask)[0]

    def tiled(q, k, v):
        return tiled_attention(q, k, v, causal=causal, block_size=block_size, query_block_size=block_size)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    out = {"explicit (lib)": explicit, f"tiled (lib, {block_size}x{block_size})": tiled, "sdpa": sdpa}
    for label, backend in sdpa_backends().items():
        def one(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        out[label] = one
    return out


def peak_bytes(fn: Callable[[], object], dev: torch.device) -> int:
    return cuda_peak_bytes(fn, dev) if dev.type == "cuda" else measure_peak_bytes(fn)


def peak_flops(dev: torch.device, dtype: torch.dtype, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table[str(dtype).removeprefix("torch.")] * 1e12
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T = 128 ... 512 only")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--min-len", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the FLOP/s share")
    args = parser.parse_args(argv)
    dev = device()
    dtype = getattr(torch, args.dtype)
    B, H, Dh = args.batch, args.heads, args.d_head
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type} ({torch.get_num_threads()} threads)"
    print(f"device: {name}   torch {torch.__version__}   dtype {args.dtype}   B={B} H={H} Dh={Dh}   "
          f"forward, no grad{'   causal' if args.causal else ''}")
    lengths = [T for T in (128 * 2**i for i in range(7)) if args.min_len <= T <= (512 if args.quick else args.max_len)]
    fns = variants(args.causal, args.block_size)
    peak = peak_flops(dev, dtype, args.peak_tflops)
    header = (f"{'T':>5} {'variant':<24} {'median ms':>10} {'vs sdpa':>8} {'peak memory':>12} {'vs sdpa':>8}"
              + (f" {'% of peak FLOP/s':>17}" if peak else ""))
    print(header)
    print("-" * len(header))
    for T in lengths:
        seed_everything(0)
        q, k, v = (torch.randn(B, H, T, Dh, device=dev, dtype=dtype) for _ in range(3))
        runnable, skipped = {}, []
        with torch.no_grad():
            ref = fns["sdpa"](q, k, v)
            for label, fn in fns.items():
                try:
                    out = fn(q, k, v)
                except RuntimeError as err:  # a backend that cannot run here (no kernel for device or dtype)
                    skipped.append(f"{label}: {str(err).splitlines()[0][:70]}")
                    continue
                tol = 2e-4 if dtype == torch.float32 else 3e-2
                if not torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol):
                    raise SystemExit(f"T={T}: {label} disagrees with sdpa, max diff {(out - ref).abs().max():.3g}")
                runnable[label] = fn
                del out
            del ref
            calls = {label: (lambda fn=fn, q=q, k=k, v=v: fn(q, k, v)) for label, fn in runnable.items()}
            mem = {label: peak_bytes(call, dev) for label, call in calls.items()}
            repeats = args.repeats or (3 if T >= 4096 or args.quick else 7)
            ms = time_steps(calls, dev, warmup=1, repeats=repeats)
        flops = 4 * B * H * T * T * Dh * (0.5 if args.causal else 1.0)
        label_T = str(T)
        for label in runnable:
            row = (f"{label_T:>5} {label:<24} {ms[label]:>10.2f} {ms[label] / ms['sdpa']:>7.2f}x "
                   f"{mem[label] / 2**20:>9.1f} MiB {mem[label] / max(mem['sdpa'], 1):>7.2f}x")
            if peak:
                row += f" {100 * flops / (ms[label] * 1e-3) / peak:>16.1f}%"
            print(row)
            label_T = ""
        for s in skipped:
            print(f"{'':>5} skipped {s}")
    matrix = B * H * lengths[-1] ** 2 * dtype.itemsize
    print(f"(median ms over round-robin repeats; peak memory above the inputs; one (B, H, T, T) matrix at "
          f"T={lengths[-1]} is {matrix / 2**20:.0f} MiB; ratios < 1 = less than sdpa)")


if __name__ == "__main__":
    main()
