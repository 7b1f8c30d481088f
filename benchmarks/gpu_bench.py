"""GPU timings of every op, forward + backward: eager reference, torch.compile of the
reference, and the "cuda" and "triton" backends, each as a median of
`triton.testing.do_bench`; achieved bandwidth (the op's floor bytes from floors.py over
its time) as a fraction of a device-to-device copy timed in the same run.

    python benchmarks/gpu_bench.py [--size celeba|quick|b16|dense2]

Without a GPU it prints one line saying so and exits 0.
"""

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="celeba")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: skipped, no CUDA device is visible to torch on this machine.")
        return 0

    import triton.testing
    from bench_losses import OPS, SIZES, make_inputs

    from scops_fast import BackendUnavailableError, losses

    size = SIZES[args.size]
    copy_src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    copy_ms = triton.testing.do_bench(lambda: copy_src.clone(), return_mode="median")
    copy_gbs = 2 * copy_src.numel() / (copy_ms * 1e-3) / 1e9
    print(f"device: {torch.cuda.get_device_name()}; copy {copy_gbs:.0f} GB/s (read + write)")
    print("| op | impl | median ms | x eager | GB/s | of copy |")
    print("|---|---|---:|---:|---:|---:|")
    for op, (public, ref) in OPS.items():
        inputs = make_inputs(op, size, "cuda")
        args_ = tuple(inputs.values())
        leaves = [t for t in args_ if t.requires_grad]
        nbytes = sum(t.numel() * t.element_size() for t in args_) + sum(
            t.numel() * t.element_size() for t in leaves
        )
        impls = {"eager": ref, "compile": torch.compile(ref, dynamic=False)}
        if public is not losses.orthonormal_loss:
            for name in ("cuda", "triton"):
                impls[name] = lambda *a, _n=name, _f=public: _f(*a, backend=_n)
        eager_ms = None
        for impl, fn in impls.items():

            def step(fn=fn, args_=args_, leaves=leaves):
                out = fn(*args_)
                outs = (out,) if torch.is_tensor(out) else tuple(out)
                torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])

            try:
                ms = triton.testing.do_bench(step, return_mode="median")
            except BackendUnavailableError as exc:
                print(f"| {op} | {impl} | unavailable: {exc} | | | |")
                continue
            eager_ms = ms if impl == "eager" else eager_ms
            gbs = nbytes / (ms * 1e-3) / 1e9
            speedup = f"{eager_ms / ms:.1f}" if eager_ms else ""
            print(f"| {op} | {impl} | {ms:.3f} | {speedup} | {gbs:.0f} | {gbs / copy_gbs:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
