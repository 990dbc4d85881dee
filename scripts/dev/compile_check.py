"""Compile the Triton backend's kernels for a CUDA target on a machine without a GPU (ahead of a GPU call).

The CPU interpreter runs the kernels as Python, so it misses what only the compiler checks (loop-carried types,
layouts, constexpr rules). This script runs the launchers of ``triton_launch.py`` on CPU tensors with the kernel
modules wrapped: every ``kernel[grid](**kwargs)`` is compiled with ``triton.compile`` for ``--arch`` (default sm_90,
the H200) instead of launched. The local triton may be newer than the GPU machine's, so a pass here is necessary,
not sufficient.

    python scripts/dev/compile_check.py [--lengths 200 1024 4096] [--arch 90] [--sass-dir DIR]

``--sass-dir`` also writes each kernel's SASS (``nvdisasm`` shipped with triton) and TTGIR to ``DIR/<kernel>_<n>.sass``
and ``.ttgir`` and logs its instruction mix (the opcodes counted over the whole kernel, loops not unrolled): where the
ALU work goes, and which layout conversions sit in a loop. The signature is built by hand, without triton's
specialization of integer arguments equal to 1 and its divisibility hints, so loads are not vectorized here and the
counts run ~30% above the GPU's (docs/triton_notes.md, v8); masks and layout conversions agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("compile_check")
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
           torch.int64: "i64", torch.bool: "i1", torch.int8: "i8"}


def _cuda_tool(name: str, cubin: bytes | None, *args: str) -> str | None:
    """stdout of the CUDA binary tool ``name`` shipped with triton (``nvdisasm``, ``cuobjdump``) run on ``cubin``,
    or None where there is no cubin or no tool."""
    import subprocess
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if cubin is None or not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        return subprocess.run([str(tool), *args, fh.name], capture_output=True, text=True).stdout


def _sass(cubin: bytes | None, path) -> str:
    """Write the SASS of ``cubin`` to ``path``; return its most frequent opcodes."""
    import collections
    import re

    text = _cuda_tool("nvdisasm", cubin, "-c")
    if text is None:
        return "no SASS"
    Path(path).write_text(text)
    opcode = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", re.M)
    ops = collections.Counter(m.group(1).split(".")[0] for m in opcode.finditer(text))
    return f"{sum(ops.values())} SASS instructions: " + ", ".join(f"{k} {v}" for k, v in ops.most_common(14))


def _resources(cubin: bytes | None) -> str:
    """Registers, spills and stack of a cubin (``cuobjdump --dump-resource-usage``)."""
    import re

    text = _cuda_tool("cuobjdump", cubin, "--dump-resource-usage")
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", text or "")
    return f"regs {found.group(1)}, stack {found.group(2)} B" if found else "resources unknown"


#: PTX instructions counted per kernel (shared-memory traffic, barriers, tensor-core products)
_PTX_OPS = ("st.shared", "ld.shared", "ldmatrix", "bar.sync", "mma.sync", "wgmma.mma_async")


class _Compiling:
    """Stands in for a kernel module: ``module.kernel[grid](**kwargs)`` compiles the kernel for the target."""

    def __init__(self, module, target, seen: dict, sass_dir=None):
        self._module, self._target, self._seen, self._sass_dir = module, target, seen, sass_dir

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        target, seen, sass_dir = self._target, self._seen, self._sass_dir

        class _Launch:
            def __getitem__(self, grid):
                def launch(**kwargs):
                    import triton
                    from triton.compiler import ASTSource

                    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
                    signature, constexprs = {}, {}
                    for param in fn.params:
                        value = kwargs[param.name]
                        if param.is_constexpr:
                            signature[param.name] = "constexpr"
                            constexprs[param.name] = value
                        elif isinstance(value, torch.Tensor):
                            signature[param.name] = "*" + _DTYPES[value.dtype]
                        elif isinstance(value, bool):
                            signature[param.name] = "i1"
                        elif isinstance(value, int):
                            signature[param.name] = "i64" if abs(value) >= 2**31 else "i32"
                        else:
                            signature[param.name] = "fp32"
                    key = (name, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())),
                           tuple(sorted(options.items())))
                    if key in seen:
                        return
                    t0 = time.time()
                    try:
                        compiled = triton.compile(ASTSource(fn, signature, constexprs), target=target,
                                                  options=options)
                        ttgir, ptx = compiled.asm.get("ttgir", ""), compiled.asm.get("ptx", "")
                        seen[key] = (f"ok ({time.time() - t0:.1f} s, shared {compiled.metadata.shared} B, "
                                     f"{_resources(compiled.asm.get('cubin'))}, "
                                     f"{ttgir.count('ttg.convert_layout')} layout conversions, "
                                     f"{ttgir.count('ttg.local_alloc')} shared-memory stores in the TTGIR; PTX: "
                                     + ", ".join(f"{ptx.count(op)} {op}" for op in _PTX_OPS) + ")")
                        if sass_dir is not None:
                            seen[key] += "; " + _sass(compiled.asm.get("cubin"),
                                                      f"{sass_dir}/{name}_{len(seen)}.sass")
                            Path(f"{sass_dir}/{name}_{len(seen)}.ttgir").write_text(ttgir)
                    except Exception as err:  # reported, the check fails
                        seen[key] = f"FAILED: {type(err).__name__}: {str(err)[:2000]}"
                    logger.info("%s %s: %s", name, options, seen[key])

                return launch

        return _Launch()


def check(lengths, arch: int, heads=8, groups=2, head_dim=16, batch=2, dtype=torch.bfloat16,
          overrides: dict | None = None, block_size: int = 16, sass_dir: str | None = None) -> dict:
    from triton.backends.compiler import GPUTarget

    from blossom_hf.models.blossomrec import attention_triton as at
    from blossom_hf.models.blossomrec import triton_launch as tlaunch
    from blossom_hf.models.blossomrec.attention_patterns import BlossomPattern

    target = GPUTarget("cuda", arch, 32)
    seen: dict = {}
    real = at._kernels()
    kernels = tuple(_Compiling(k, target, seen, sass_dir) for k in real)
    pattern = BlossomPattern(block_size=block_size, compression_window=2 * block_size)
    for seq_len in lengths:
        for serving in (False, True):
            q = torch.randn(batch, heads, 1 if serving else seq_len, head_dim).to(dtype)
            k = torch.randn(batch, groups, seq_len, head_dim).to(dtype)
            v = torch.randn(batch, groups, seq_len, head_dim).to(dtype)
            ck = torch.randn(batch, groups, seq_len // pattern.block_size, head_dim).to(dtype)
            gate = torch.rand(batch, heads, q.shape[2], 2)
            lens = torch.full((batch,), seq_len)
            positions = torch.full((batch, 1), seq_len - 1) if serving else None
            geo = tlaunch.plan(heads, groups, seq_len, head_dim, pattern, q.element_size(), "auto", serving)
            if overrides and not serving:
                geo = dataclasses.replace(geo, **overrides)
            sel, psel, lse_z, union = tlaunch.launch_select(kernels[0], geo, q, ck, lens, 0.25, pattern, None,
                                                            positions, seq_len)
            sel.fill_(-1)
            out, o_l, o_s, lse = tlaunch.launch_forward(kernels[1], geo, q, k, v, gate, sel, lens, 0.25, pattern,
                                                        not serving, positions, union)
            if not serving:
                saved = (q, k, v, ck, gate, lens, sel, psel, lse_z, o_l, o_s, lse, union)
                tlaunch.launch_backward(kernels, geo, saved, torch.randn(q.shape).to(dtype), 0.25, pattern, True,
                                        True)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[200, 1024, 4096])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=INT",
                        help="TritonGeometry fields to override (training calls), e.g. BNQ=16 warps_bwd_q=4")
    parser.add_argument("--sass-dir", default=None, help="write each kernel's SASS there and log its instruction mix")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {k: int(v) for k, v in (item.split("=", 1) for item in args.set)}
    seen = check(args.lengths, args.arch, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32,
                 overrides=overrides, block_size=args.block_size, sass_dir=args.sass_dir)
    failed = [v for v in seen.values() if v.startswith("FAILED")]
    logger.info("%d kernel variants compiled, %d failed", len(seen), len(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
