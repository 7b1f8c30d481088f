"""Compile every kernel of this package ahead of time for an NVIDIA target, no GPU needed:

    python -m scops_fast.triton_kernels.aot [--arch 90] [--dtype fp32|fp64] [--ones]

Triton's interpreter, which the CPU tests use, accepts programs the GPU compiler rejects
(dot shapes, layouts, scalar/tensor mixes), so this is the check that the CUDA path
lowers at all. It prints ptxas' register and spill counts at the default `BLOCKS`.
--ones compiles the variants Triton specialises when an integer argument is 1 (K=1,
one-row images, ...). It must run without TRITON_INTERPRET=1 (interpreted kernels cannot
be compiled).
Exit status 1 if any kernel fails to compile.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from scops_fast.triton_kernels import BLOCKS, MIN_DOT, equivariance, fixed, moments, semantic, warp


def kernels(dtype: str):
    """(kernel, argument types, constexprs) of every kernel at the default block sizes,
    K = 8 parts (9 channels) as in the CelebA experiment."""
    t = "*" + dtype
    f64, i64, i32 = "*fp64", "*i64", "i32"
    tile, warp_px = BLOCKS["tile_pixels"], BLOCKS["warp_pixels"]
    chan = 16  # pow2(K + 1)
    prec = "ieee"
    return [
        (
            moments.moments_forward_kernel,
            dict(z_ptr=t, part_ptr=f64, C=i32, H=i32, W=i32, span=i32),
            dict(FROM_LOGITS=True, BLOCK_C=chan, BLOCK_P=tile),
        ),
        (
            moments.moments_backward_kernel,
            dict(z_ptr=t, g_ptr=f64, out_ptr=t, C=i32, H=i32, W=i32),
            dict(FROM_LOGITS=True, BLOCK_C=chan, BLOCK_P=tile),
        ),
        (
            warp.warp_forward_kernel,
            dict(x_ptr=t, m_ptr=f64, out_ptr=t, C=i32, H=i32, W=i32),
            dict(BORDER=False, BLOCK_P=warp_px),
        ),
        (
            warp.warp_backward_kernel,
            dict(g_ptr=t, m_ptr=f64, sc_ptr=f64, acc_ptr=i64, bad_ptr="*i32", C=i32, H=i32, W=i32),
            dict(BORDER=False, BLOCK_P=warp_px),
        ),
        (
            fixed.from_fixed_kernel,
            dict(acc_ptr=i64, sc_ptr=f64, bad_ptr="*i32", out_ptr=t, n=i32),
            dict(BLOCK=BLOCKS["elementwise"]),
        ),
        (
            equivariance.equivariance_forward_kernel,
            dict(pred_ptr=t, tps_ptr=t, m_ptr=f64, kl_ptr=f64, mom_ptr=f64)
            | dict(C=i32, H=i32, W=i32, span=i32),
            dict(BORDER=False, BLOCK_C=chan, BLOCK_P=tile),
        ),
        (
            equivariance.equivariance_backward_kernel,
            dict(pred_ptr=t, tps_ptr=t, m_ptr=f64, gkl_ptr=f64, gtps_ptr=f64, gwarp_ptr=f64)
            | dict(sc_ptr=f64, grad_tps_ptr=t, acc_ptr=i64, bad_ptr="*i32", C=i32, H=i32, W=i32),
            dict(BORDER=False, BLOCK_C=chan, BLOCK_P=tile),
        ),
        (
            semantic.semantic_dense_kernel,
            dict(v_ptr=t, z_ptr=t, w_ptr=t, loss_ptr=f64, gz_ptr=t, gw_ptr=t)
            | dict(C=i32, K=i32, H=i32, W=i32, n_tiles=i32),
            dict(
                GRADS=True,
                PRECISION=prec,
                BLOCK_K=MIN_DOT,
                BLOCK_C=BLOCKS["dense_channels"],
                BLOCK_P=BLOCKS["dense_pixels"],
            ),
        ),
        (
            semantic.semantic_lowres_kernel,
            dict(z_ptr=t, a_ptr=t, g_ptr=t, d_ptr=t, s_ptr=t, loss_ptr=f64, gz_ptr=t, t_ptr=t)
            | dict(gg_ptr=t, K=i32, H=i32, W=i32, h=i32, w=i32),
            dict(
                HAS_SALIENCY=True,
                GRADS=True,
                PRECISION=prec,
                BLOCK_K=MIN_DOT,
                BLOCK_J=BLOCKS["lowres_columns"],
                BLOCK_X=MIN_DOT,
            ),
        ),
        (
            semantic.lowres_rows_kernel,
            dict(t_ptr=t, ga_ptr=t, K=i32, H=i32, h=i32, w=i32),
            dict(BLOCK_K=MIN_DOT, BLOCK_X=MIN_DOT),
        ),
    ]


def ptxas_report(ptx: str, arch: int) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""
        cmd = [ptxas, "-v", f"-arch=sm_{arch}{suffix}", path, "-o", os.path.join(tmp, "k.o")]
        done = subprocess.run(cmd, capture_output=True, text=True)
    found = re.findall(
        r"Used \d+ registers|\d+ bytes spill stores|\d+ bytes spill loads", done.stderr
    )
    return ", ".join(found) or done.stderr.strip()[-200:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp64"))
    parser.add_argument("--ones", action="store_true", help="integer arguments as constant 1")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for fn, types, constexprs in kernels(args.dtype):
        if args.ones:
            constexprs = constexprs | {n: 1 for n, ty in types.items() if ty == "i32"}
        signature = {n: "constexpr" if n in constexprs else types[n] for n in fn.arg_names}
        try:
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs),
                target=target,
                options={"num_warps": BLOCKS["warps"]},
            )
        except Exception as exc:  # report every kernel, then fail
            failed += 1
            print(f"{fn.__name__:30s} FAILED {type(exc).__name__}: {exc}")
            continue
        print(f"{fn.__name__:30s} ok: {ptxas_report(compiled.asm['ptx'], args.arch)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
