"""Position-wise FFN, one training step: two Linear layers vs two Conv1d(kernel_size=1) layers.

    python bench/bench_ffn.py                  # the source's configuration (below)
    python bench/bench_ffn.py --quick          # a small configuration, to check that it runs
    python bench/bench_ffn.py --device cpu     # force a device (default: lib.runtime.device())

The source material timed this in Keras on an RTX 2080: 128,000 samples of
length 32, d_model 512, d_ff 2048, batch 512; a Dense FFN took 14.8 s per epoch,
the Conv1D one 18.2 s (ratio 1.23).  Here the same comparison in PyTorch: one
training step (forward, MSE loss, backward, Adam step) of ``PositionWiseFFN``
and of its twin ``PositionWiseFFNConv`` with the same weights, timed side by side
(round-robin, one step of each per round, after warm-up; the median is shown),
and the projected seconds per epoch (128,000 / 512 = 250 steps).  A third row,
"Conv1d on (B, D, T)", feeds the convolutions channels-first input directly, to
separate the cost of the two transposes from the cost of the convolution itself.

What decides it
---------------
The arithmetic is identical: 2·B·T·D·F multiply-adds per layer either way.
The difference is in how the work reaches the matrix-multiply units:

* ``nn.Linear`` on (B, T, D) views the input as one (B·T, D) matrix and calls
  one GEMM per layer (cuBLAS / MKL / oneDNN), the best-tuned kernel there is.
* ``nn.Conv1d(k=1)`` goes through the convolution path.  PyTorch convolutions
  are channels-first, so the (B, T, D) input is transposed to (B, D, T) and the
  output back (memory copies once the result must be contiguous); the convolution
  library then picks an algorithm -- on CPU oneDNN/im2col + GEMM (for k = 1 the
  im2col buffer is the input itself, but it is still a per-sample batched GEMM on
  a transposed layout), on GPU one of cuDNN's algorithms (implicit GEMM, FFT,
  Winograd...) chosen by heuristics, or by timing when
  ``torch.backends.cudnn.benchmark = True``.  Its weight gradient is a separate
  reduction over the batch.  Any of these may lose to a single large GEMM, and
  the layout transposes cost memory traffic on top.
* The ratio depends on the machine, the library versions, the dtype and the
  shapes, which is why it is measured here rather than asserted anywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.ffn import PositionWiseFFN, PositionWiseFFNConv  # noqa: E402
from lib.runtime import device, seed_everything, time_steps  # noqa: E402

SAMPLES = 128_000  # the source's training-set size


class _ConvChannelsFirst(nn.Module):
    """The Conv1d FFN without the transposes: input and output (B, D, T)."""

    def __init__(self, conv: PositionWiseFFNConv) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, T) -> (B, D, T)
        c = self.conv
        return c.conv2(c.drop(c.act(c.conv1(x))))


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type} ({torch.get_num_threads()} threads)"


def make_variants(D: int, Fd: int, dev: torch.device, dtype: torch.dtype) -> dict[str, tuple[nn.Module, bool]]:
    """name -> (model, channels_first), all with the same weights."""
    linear = PositionWiseFFN(D, Fd).to(dev, dtype)
    conv = linear.to_conv()
    conv_cf = _ConvChannelsFirst(linear.to_conv())
    return {
        "Linear (PositionWiseFFN)": (linear, False),
        "Conv1d k=1 (PositionWiseFFNConv)": (conv, False),
        "Conv1d on (B, D, T), no transposes": (conv_cf, True),
    }


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    return step


def bench(
    B: int, T: int, D: int, Fd: int, dev: torch.device, dtype: torch.dtype, warmup: int, repeats: int
) -> dict[str, float]:
    """Median milliseconds per training step of each variant, timed round-robin."""
    seed_everything(0)
    variants = make_variants(D, Fd, dev, dtype)
    x = torch.randn(B, T, D, device=dev, dtype=dtype)  # (B, T, D)
    y = torch.randn(B, T, D, device=dev, dtype=dtype)
    x_cf, y_cf = x.transpose(1, 2).contiguous(), y.transpose(1, 2).contiguous()  # (B, D, T)
    with torch.no_grad():  # the variants compute the same function
        ref = variants["Linear (PositionWiseFFN)"][0](x)
        for name, (model, cf) in variants.items():
            out = model(x_cf).transpose(1, 2) if cf else model(x)
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            if not torch.allclose(out, ref, atol=tol, rtol=tol):
                raise SystemExit(f"{name} disagrees with the Linear FFN: max diff {(out - ref).abs().max():.3g}")
    steps = {
        name: make_step(model, x_cf if cf else x, y_cf if cf else y) for name, (model, cf) in variants.items()
    }
    return time_steps(steps, dev, warmup=warmup, repeats=repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small configuration (B=64, T=32, D=128, d_ff=512)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: lib.runtime.device())")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10, quick 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms")
    args = parser.parse_args(argv)

    dev = device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    B, T, D, Fd = (64, 32, 128, 512) if args.quick else (512, 32, 512, 2048)
    repeats = args.repeats or (5 if args.quick else 10)
    steps_per_epoch = SAMPLES // B
    print(f"device: {device_name(dev)}   torch {torch.__version__}   dtype {args.dtype}")
    print(f"one training step (forward, MSE loss, backward, Adam): B={B} T={T} d_model={D} d_ff={Fd}; "
          f"an epoch of {SAMPLES:,} samples = {steps_per_epoch} steps")
    ms = bench(B, T, D, Fd, dev, dtype, args.warmup, repeats)
    base = ms["Linear (PositionWiseFFN)"]
    header = f"{'variant':<36} {'ms/step':>9} {'s/epoch':>9} {'vs Linear':>10}"
    print(header)
    print("-" * len(header))
    for name, t in ms.items():
        print(f"{name:<36} {t:>9.2f} {t * steps_per_epoch / 1e3:>9.2f} {t / base:>9.2f}x")
    ratio = ms["Conv1d k=1 (PositionWiseFFNConv)"] / base
    print(f"Conv1d/Linear ratio: {ratio:.2f}   (Keras on an RTX 2080, from the source: 18.2 s / 14.8 s = 1.23)")
    print(f"(median of {repeats} round-robin repeats after {args.warmup} warm-up rounds)")


if __name__ == "__main__":
    main()
