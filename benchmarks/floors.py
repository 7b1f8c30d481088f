"""The floor of every fused op: the bytes it must move and the floating-point work it
must do for one forward + backward, at a given size (default: SPEC section 8, the
CelebA configuration). Achieved throughput is reported against these.

    python benchmarks/floors.py [--B 6 --K 8 --H 256 --W 256 --C 1024 --h 16 --w 16]

Conventions: float32 tensors; every input read once and every output and gradient
written once per pass that needs it; flops count a fused multiply-add as 2 and an
exp or log as 1 (a lower bound: both cost tens of instructions).
"""

import argparse


def floors(B=6, K=8, H=256, W=256, C=1024, h=16, w=16, itemsize=4):
    K1, N = K + 1, B * H * W
    logits = N * K1 * itemsize
    softmax = N * K1 * 4  # max, subtract, exp, normalise per element
    return {
        # One pass reads the logits and writes the gradient (the fused op forms it in the
        # forward; the backward only scales it). Per pixel and part: the 3 moment sums, and
        # the part's polynomial, its share of the dot product and its gradient.
        "concentration_loss": (2 * logits, softmax + 2 * N * K * 8),
        # Same passes over (B, K, H, W) probabilities, without the softmax.
        "batch_get_centers": (3 * N * K * itemsize, 2 * N * K * 8),
        # Per pass: the spline position (25 radial terms: 2 subtractions, 3 mul-adds and a
        # log each, then 28 x 2 mul-adds), then 4 bilinear mul-adds per channel. Forward
        # reads x, writes the output; backward reads the gradient and writes one.
        "tps_warp (K+1 channels)": (4 * logits, 2 * N * (25 * 9 + 112 + K1 * 8)),
        # Forward reads pred and pred_tps; backward reads both and writes both gradients.
        "equivariance_losses": (
            6 * logits,
            2 * N * (25 * 9 + 112 + K1 * 8) + 4 * softmax + 2 * N * K1 * 4 + 2 * N * K * 12,
        ),
        # V (B, C, H, W) read once (forward and backward fused), logits in, gradient out;
        # per pixel and channel: residual (K mul-adds), its square, and K mul-adds each
        # for the gradients of P and W.
        "semantic_consistency_loss": (
            N * C * itemsize + 2 * logits,
            N * C * (3 * 2 * K + 2) + softmax,
        ),
        # Logits in, gradient out, the low-resolution features read once; per pixel the
        # K x K quadratic form, the upsampled K-vector and the 10-term |UV|^2; at low
        # resolution A = W V and the five neighbour Gram maps.
        "semantic_consistency_loss_lowres": (
            2 * logits + B * C * h * w * itemsize,
            N * (2 * 2 * K * K + 2 * 8 * K + 40) + softmax + B * h * w * C * 2 * (K + 5),
        ),
    }


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
