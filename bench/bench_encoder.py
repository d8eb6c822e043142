"""One training step (forward, backward, Adam) of lib's encoder stack vs torch.nn.TransformerEncoder.

    python bench/bench_encoder.py               # d_model 256, 4 layers, T 128, B 16 (issue 16's sizes)
    python bench/bench_encoder.py --quick       # a tiny configuration, to check that it runs
    python bench/bench_encoder.py --trials 3    # repeat the whole comparison, report each trial's ratios
    COURSE_DEVICE=cpu OMP_NUM_THREADS=2 python bench/bench_encoder.py

Both stacks have the same sizes and the same weights (lib's ``Encoder`` blocks plus its
final norm, copied from torch's layers; lib's token embedding is left out since torch's
module takes embeddings).  Post-norm and pre-norm, lib's explicit path (the math the
lessons teach) and its fast path (PyTorch's fused attention kernel), side by side.
Variants are timed round-robin, one step of each per round, so background load hits them
alike; medians over the rounds.  FLOP/s is given as a share of the machine's fp32 GEMM rate
measured in the same run on a matmul of the FFN's shape (B·T, D) x (D, F).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.interop import mha_from_torch  # noqa: E402
from lib.runtime import device, seed_everything, synchronize, time_steps  # noqa: E402
from lib.transformer import Encoder, EncoderConfig  # noqa: E402


def lib_stack(ref: nn.TransformerEncoder, config: EncoderConfig) -> nn.Module:
    """lib's blocks and final norm with torch's weights, applied to embeddings (B, T, D)."""
    enc = Encoder(config)
    with torch.no_grad():
        for block, layer in zip(enc.blocks, ref.layers, strict=True):
            block.attention = mha_from_torch(layer.self_attn, fast=config.fast)
            for ours, theirs in ((block.ffn.fc1, layer.linear1), (block.ffn.fc2, layer.linear2),
                                 (block.residual1.norm, layer.norm1), (block.residual2.norm, layer.norm2)):
                ours.load_state_dict(theirs.state_dict())
        if ref.norm is not None:
            enc.final_norm.load_state_dict(ref.norm.state_dict())

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks, self.final_norm = enc.blocks, enc.final_norm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)  # (B, T, D)
            return self.final_norm(x)  # (B, T, D)

    return Stack()


def training_flops(B: int, T: int, D: int, F: int, L: int) -> float:
    """Matmul FLOPs of one step: forward (projections 4·2BTD², scores and weights·v 2·2BT²D, FFN 2·2BTDF) x 3."""
    forward = L * (8 * B * T * D * D + 4 * B * T * T * D + 4 * B * T * D * F)
    return 3.0 * forward  # backward computes two matmuls per forward matmul


def gemm_rate(B: int, T: int, D: int, F: int, dev: torch.device, repeats: int) -> float:
    """Measured fp32 FLOP/s of a (B·T, D) x (D, F) matmul, the FFN's shape: the machine's reachable rate."""
    a, b = torch.randn(B * T, D, device=dev), torch.randn(D, F, device=dev)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(dev)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        synchronize(dev)
        times.append((time.perf_counter() - start) / 10)
    return 2 * B * T * D * F / statistics.median(times)


def variants(B: int, T: int, D: int, H: int, F: int, L: int, norm_first: bool,
             dev: torch.device) -> dict[str, Callable[[], None]]:
    seed_everything(0)
    layer = nn.TransformerEncoderLayer(D, H, F, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref = nn.TransformerEncoder(layer, L, norm=nn.LayerNorm(D) if norm_first else None,
                                enable_nested_tensor=False).to(dev)
    cfg = dict(vocab_size=8, d_model=D, num_heads=H, d_ff=F, num_layers=L, dropout=0.0, norm_first=norm_first)
    models = {
        "lib explicit": lib_stack(ref, EncoderConfig(**cfg)).to(dev),
        "lib fast": lib_stack(ref, EncoderConfig(**cfg, fast=True)).to(dev),
        "torch.nn.TransformerEncoder": ref,
    }
    x = torch.randn(B, T, D, device=dev)
    with torch.no_grad():
        outs = {name: m(x) for name, m in models.items()}
    for name, out in outs.items():
        diff = (out - outs["torch.nn.TransformerEncoder"]).abs().max().item()
        if diff > 1e-3:
            raise SystemExit(f"{name} disagrees with torch.nn.TransformerEncoder: max diff {diff:.3g}")

    def step_of(model: nn.Module) -> Callable[[], None]:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()

        return step

    return {name: step_of(m.train()) for name, m in models.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one tiny configuration")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per trial")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--trials", type=int, default=1, help="repeat the whole comparison")
    args = parser.parse_args(argv)
    dev = device()
    B, T, D, H, F, L = (2, 16, 32, 4, 64, 2) if args.quick else (16, 128, 256, 4, 1024, 4)
    repeats = args.repeats or (3 if args.quick else 15)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type} ({torch.get_num_threads()} threads)"
    print(f"device: {name}   torch {torch.__version__}   fp32   one training step (forward + backward + Adam)")
    print(f"B={B} T={T} D={D} H={H} F={F} L={L}; median of {repeats} round-robin rounds after {args.warmup} warm-up")
    flops = training_flops(B, T, D, F, L)
    header = f"{'trial':<6}{'norm':<10}{'variant':<30}{'median ms':>10}{'vs torch':>10}{'% of GEMM':>11}"
    print(header)
    print("-" * len(header))
    ratios: dict[tuple[str, str], list[float]] = {}
    for trial in range(args.trials):
        peak = gemm_rate(B, T, D, F, dev, repeats)
        for norm_first in (False, True):
            norm = "pre" if norm_first else "post"
            ms = time_steps(variants(B, T, D, H, F, L, norm_first, dev), dev, warmup=args.warmup, repeats=repeats)
            base = ms["torch.nn.TransformerEncoder"]
            for variant, t in ms.items():
                share = flops / (t / 1e3) / peak
                ratios.setdefault((norm, variant), []).append(t / base)
                print(f"{trial:<6}{norm:<10}{variant:<30}{t:>10.1f}{t / base:>9.2f}x{share:>10.0%}")
        print(f"{trial:<6}GEMM rate {peak / 1e9:.1f} GFLOP/s ((B*T, D) x (D, F) matmul)")
    if args.trials > 1:
        print("median ratio to torch over trials:")
        for (norm, variant), r in ratios.items():
            print(f"      {norm:<10}{variant:<30}{statistics.median(r):>19.2f}x  (trials: "
                  + ", ".join(f"{v:.2f}" for v in r) + ")")


if __name__ == "__main__":
    main()
