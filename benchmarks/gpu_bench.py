"""GPU timings of every op, forward + backward: eager reference, torch.compile of the
reference, and the "cuda" and "triton" backends, each as a median of
`triton.testing.do_bench`; achieved bandwidth (the bytes of the op's inputs and of its
gradients over its time) as a fraction of a device-to-device copy timed in the same run.
It ends with the backend order these timings suggest for `_dispatch.AUTO_ORDER["cuda"]`.

    python benchmarks/gpu_bench.py [--size celeba|quick|b16|dense2] [--out FILE.json]

`--out` also writes FILE.md, the table. Without a GPU it prints one line saying so and
exits 0.
"""

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

GPU_BACKENDS = ("cuda", "triton")


def faster_backend(rows: list[dict]) -> dict:
    """{op: GPU backend with the lowest median} over the rows that ran."""
    best = {}
    for row in rows:
        if row["impl"] in GPU_BACKENDS and row.get("ms") is not None:
            op = row["op"]
            if op not in best or row["ms"] < best[op][1]:
                best[op] = (row["impl"], row["ms"])
    return {op: impl for op, (impl, _) in best.items()}


def markdown(result: dict) -> str:
    lines = [
        f"GPU: {result['device']}; copy {result['copy_gbs']:.0f} GB/s (read + write); "
        f"size {result['size']}; torch {result['torch']}",
        "",
        "| op | impl | median ms | x eager | GB/s | of copy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("ms") is None:
            lines.append(f"| {r['op']} | {r['impl']} | unavailable: {r['error']} | | | |")
            continue
        speedup = f"{r['x_eager']:.1f}" if r.get("x_eager") else ""
        lines.append(
            f"| {r['op']} | {r['impl']} | {r['ms']:.3f} | {speedup} | {r['gbs']:.0f} "
            f"| {r['of_copy']:.0%} |"
        )
    lines += ["", "Faster GPU backend per op: " + json.dumps(result["faster_backend"])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="celeba")
    parser.add_argument("--out", type=pathlib.Path, default=None)
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
    rows = []
    for op, (public, ref) in OPS.items():
        inputs = make_inputs(op, size, "cuda")
        args_ = tuple(inputs.values())
        leaves = [t for t in args_ if t.requires_grad]
        nbytes = sum(t.numel() * t.element_size() for t in args_ if torch.is_tensor(t)) + sum(
            t.numel() * t.element_size() for t in leaves
        )
        impls = {"eager": ref, "compile": torch.compile(ref, dynamic=False)}
        if public is not losses.orthonormal_loss:
            for name in GPU_BACKENDS:
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
                rows.append({"op": op, "impl": impl, "ms": None, "error": str(exc)})
                continue
            eager_ms = ms if impl == "eager" else eager_ms
            gbs = nbytes / (ms * 1e-3) / 1e9
            rows.append(
                {
                    "op": op,
                    "impl": impl,
                    "ms": ms,
                    "x_eager": eager_ms / ms if eager_ms else None,
                    "gbs": gbs,
                    "of_copy": gbs / copy_gbs,
                }
            )
            print(f"{op:34s} {impl:8s} {ms:9.3f} ms", flush=True)
    result = {
        "device": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "size": args.size,
        "copy_gbs": copy_gbs,
        "rows": rows,
        "faster_backend": faster_backend(rows),
    }
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
