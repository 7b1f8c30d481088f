"""The floor of every fused op (`bench_losses.floors`, beside each op's benchmark inputs):
the bytes it must move and the floating-point work it must do for one forward + backward,
at a given size (default: SPEC section 8, the CelebA configuration). Achieved throughput is
reported against these.

    python benchmarks/floors.py [--B 6 --K 8 --H 256 --W 256 --C 1024 --h 16 --w 16]

Conventions: float32 tensors; every input read once and every output and gradient
written once per pass that needs it; flops count a fused multiply-add as 2 and an
exp or log as 1 (a lower bound: both cost tens of instructions).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from bench_losses import floors  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in dict(B=6, K=8, H=256, W=256, C=1024, h=16, w=16).items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)
    print(f"size: {vars(args)}")
    print("| op | bytes moved (MB) | GFLOP |")
    print("|---|---:|---:|")
    for op, (nbytes, flops) in floors(**vars(args)).items():
        print(f"| {op} | {nbytes / 1e6:.1f} | {flops / 1e9:.3f} |")


if __name__ == "__main__":
    main()
