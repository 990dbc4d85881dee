"""BlossomRec attention for CPU inference in one compiled pass per query (C source: ``cpu_kernel_source.py``;
docs/cpu_kernel.md).

The sdpa backend's CPU inference (no gradient, eager mode) runs this kernel wherever it is available, at every
history length (it is faster than the PyTorch layouts at every length measured, docs/cpu_kernel.md): per query and kv
head it ranks the windows, reads the own and selected blocks and the STIS keys straight from K, V and a transposed
copy of K (from K's rows for the serving path's few queries per row), and writes ``alpha * LTIS + beta * STIS``,
without materialising any gathered key set. Same function as the eager reference (tests/test_cpu_kernel.py: fp32,
within 1e-5). The same library also holds two element-wise passes of CPU inference: RoPE (:func:`rotary`, both
models) and the compressor's windows (:func:`compressor_windows`), bit-identical to the PyTorch ops.

Building: the C source is compiled once per ``(head_dim, block size, group size)`` with the system C compiler (``$CC``,
else ``cc``, ``gcc`` or ``clang``; ``-O3 -march=native -ffp-contract=fast``), into the cache folder
(``$BLOSSOM_HF_CACHE``, else ``$XDG_CACHE_HOME/blossom_hf``, else ``~/.cache/blossom_hf``; ``cpu_kernel/``; where that
cannot be written, a per-user folder of the system's temporary folder), named by a hash of the source, the flags, the
compiler and the CPU, and written under a temporary name then renamed, so that an interrupted build or two processes
building at once never leave a half-written library. A build takes well under a second.

Where no compiler is found, the build fails, the configuration is out of range (``n > 64``) or the kernel is
switched off (:data:`CPU_KERNEL` ``= False``, or ``BLOSSOM_HF_CPU_KERNEL=0``), the sdpa backend runs its PyTorch
layouts instead: documented, and logged once with the reason (:func:`kernel_status` says which).

Threads: the work units (a kv head's block of ``b`` queries, or one query where positions are given) run on
``torch.get_num_threads()`` threads. Where torch runs on an OpenMP runtime the kernel is built with OpenMP and linked
against that same runtime (found among the process's loaded libraries), so its parallel loop runs on torch's own
worker threads; otherwise (or where that build fails) the units are split into contiguous shares, one ctypes call
(which releases the GIL) per share on a small thread pool, the calling thread running one share itself: slower, since
torch's OpenMP workers keep spinning for a while after each torch operation and compete for the cores (2 threads,
the attention call alone, one history of 4096 items: 8.1 against 4.9 ms; ``scripts/dev/cpu_kernel_ab.py``,
docs/cpu_kernel.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .attention_patterns import BlossomPattern, stis_offsets
from .cpu_kernel_source import SOURCE

logger = logging.getLogger(__name__)

__all__ = ["CPU_KERNEL", "MAX_SELECTED", "compressor_windows", "cpu_kernel_attention", "kernel_available",
           "kernel_status", "rotary"]

#: Use the compiled kernel for CPU inference where available (``BLOSSOM_HF_CPU_KERNEL=0`` in the environment sets it
#: to False at import). With False the sdpa backend runs its PyTorch layouts (docs/cpu_kernel.md compares the two).
def _switch_from_environment() -> bool:
    return os.environ.get("BLOSSOM_HF_CPU_KERNEL", "1").strip().lower() not in ("0", "false", "off", "no")


CPU_KERNEL = _switch_from_environment()
#: largest ``ltis_num_selected_blocks`` the kernel takes (its per-query arrays)
MAX_SELECTED = 64
#: with positions given, more queries per row than this read the keys from a transposed copy of K (one multiply-add per
#: vector of a block's logits); fewer (the serving path's one) compute them from K's rows, without the copy
TILED_QUERIES = 16
#: largest ``group size x max(head_dim, block size)`` (the kernel's per-query tiles live on the stack)
_MAX_TILE = 1 << 16
#: fewer (batch rows x kv heads x queries) than this run in the calling thread alone: OpenMP builds (a parallel
#: loop on torch's workers is cheap), other builds (a share handed to the thread pool costs more)
SINGLE_THREAD_QUERIES = {"openmp": 64, "threads": 512}

_FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp-simd", "-ffp-contract=fast", "-fno-math-errno",
          "-fno-trapping-math")
_ARCH_FLAGS = ("-march=native",)

_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
_ARGTYPES = [_I64, _I64, _I64,                # units, threads
             _PTR, _I64, _I64, _I64,          # q and its strides
             _PTR, _I64, _I64, _I64,          # k
             _PTR, _I64, _I64, _I64,          # v
             _PTR, _PTR, _PTR, _PTR, _PTR,    # kt, ck, selected, positions, lengths
             _PTR, _I64, _I64, _I64,          # gate
             _PTR,                            # out
             _I64, _I64, _I64, _I64, _I64,    # G, Q, L, n, windows
             _PTR, _I64, _I64, _F32]          # offsets, num_offsets, sinks, scaling

_ROPE_ARGTYPES = [_I64, _PTR, _I64, _I64, _I64, _PTR, _PTR, _I64, _I64, _PTR, _I64, _I64, _I64]
_TILES_ARGTYPES = [_I64, _PTR, _I64, _I64, _I64, _PTR, _I64, _I64, _I64]
_WINDOWS_ARGTYPES = [_I64, _PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64]

_LOCK = threading.Lock()
_LIBRARIES: dict[tuple[int, int, int], object] = {}  # (head_dim, block, group) -> (function, openmp), or an error
_OPS: dict[int, object] = {}  # head_dim -> (rope, windows, openmp) of a loaded library, or an error string
_TILES: dict[tuple[int, int, int], object] = {}  # (head_dim, block, group) -> blossom_tiles of that library
_NOTED: set[str] = set()
_POOL: list = [None, 0]  # [ThreadPoolExecutor, its size]
_OFFSETS: dict[tuple[int, int], torch.Tensor] = {}


def _note_once(message: str, *args, level: int = logging.WARNING) -> None:
    text = message % args
    if text not in _NOTED:
        _NOTED.add(text)
        logger.log(level, text)


def _cache_dir() -> Path:
    root = os.environ.get("BLOSSOM_HF_CACHE") or (
        Path(os.environ["XDG_CACHE_HOME"]) / "blossom_hf" if os.environ.get("XDG_CACHE_HOME")
        else Path.home() / ".cache" / "blossom_hf")
    return Path(root) / "cpu_kernel"


def _target(name: str) -> Path:
    """Where library ``name`` is (or goes): the cache folder, or where that cannot be written (a read-only home)
    and holds no copy, a per-user folder in the system's temporary folder."""
    preferred = _cache_dir() / name
    if preferred.is_file():
        return preferred
    try:
        preferred.parent.mkdir(parents=True, exist_ok=True)
        if os.access(preferred.parent, os.W_OK):
            return preferred
    except OSError:
        pass
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"blossom_hf_{user}" / "cpu_kernel" / name


def _compiler() -> str | None:
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen) or (chosen if Path(chosen).is_file() else None)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_identity() -> str:
    """The CPU the library is built for (``-march=native``): model and feature flags where Linux lists them."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    text += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return text


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _openmp_runtime() -> str | None:
    """The OpenMP runtime library torch loaded into this process (Linux: from /proc/self/maps), or None."""
    if torch.__config__.parallel_info().find("OpenMP") < 0:
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if line.rstrip().endswith((".so", ".so.1", ".so.5"))}
    except OSError:
        return None
    for path in sorted(paths):
        if re.match(r"lib(gomp|iomp5|omp)\b", Path(path).name):
            return path
    return None


def _build(head_dim: int, block: int, group: int) -> object:
    """Compile (or find in the cache) and load the kernel for one shape: ``(function, openmp)``, or an error string.
    Tried in order: with OpenMP (linked against torch's runtime, where found) and ``-march=native``, without OpenMP,
    without ``-march=native``."""
    compiler = _compiler()
    if compiler is None:
        return "no C compiler found (set CC, or install gcc or clang)"
    source = SOURCE.encode()
    defines = (f"-DHEAD_DIM={head_dim}", f"-DBLOCK={block}", f"-DGROUP={group}")
    version, cpu = _compiler_version(compiler), _cpu_identity()
    runtime = _openmp_runtime()
    attempts = ([(("-fopenmp",), runtime, _ARCH_FLAGS)] if runtime else []) + [
        ((), None, _ARCH_FLAGS), ((), None, ())]
    errors = []
    for openmp, link, arch in attempts:
        flags = (*_FLAGS, *openmp, *arch, *defines)
        digest = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), compiler.encode(), version.encode(),
                                            cpu.encode(), str(link).encode()])).hexdigest()[:16]
        name = f"blossom_cpu_d{head_dim}_b{block}_g{group}_{digest}.so"
        target = _target(name)
        if not target.is_file():
            error = _compile(compiler, flags, link, target)
            if error:
                errors.append(error)
                continue
        try:
            library = ctypes.CDLL(str(target))
        except OSError as exc:
            errors.append(f"loading {target}: {exc}")
            continue
        function = library.blossom_attend
        function.argtypes = _ARGTYPES
        function.restype = None
        library.blossom_openmp.restype = ctypes.c_int
        library.blossom_rope.argtypes, library.blossom_windows.argtypes = _ROPE_ARGTYPES, _WINDOWS_ARGTYPES
        library.blossom_tiles.argtypes = _TILES_ARGTYPES
        library.blossom_rope.restype = library.blossom_windows.restype = library.blossom_tiles.restype = None
        _TILES[(head_dim, block, group)] = library.blossom_tiles
        openmp = bool(library.blossom_openmp())
        if not openmp:  # the slower thread-pool path (module docstring, "Threads")
            _note_once("BlossomRec's CPU kernel runs without OpenMP (%s): its threads come from a thread pool, which "
                       "competes with torch's OpenMP workers", "; ".join(errors) if errors else
                       "torch's OpenMP runtime was not found among the loaded libraries", level=logging.INFO)
        _OPS.setdefault(head_dim, (library.blossom_rope, library.blossom_windows, openmp))
        return function, openmp
    return "; ".join(dict.fromkeys(errors)) or "the build failed"


def _compile(compiler: str, flags: tuple[str, ...], link: str | None, target: Path) -> str | None:
    """Compile next to ``target`` under a temporary name, then rename it to ``target`` (atomic: a crash or a full disk
    leaves no half-written library). ``link``: an OpenMP runtime to link against instead of the compiler's own.
    Returns an error or None."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(handle)
    except OSError as exc:
        return f"cannot write to {folder} (set BLOSSOM_HF_CACHE to a writable folder): {exc}"
    objects = temporary + ".o"
    try:
        started = time.perf_counter()
        if link is None:
            commands = [[compiler, *flags, "-x", "c", "-", "-o", temporary]]
        else:  # compile with OpenMP, link against torch's runtime (not -fopenmp's default one)
            commands = [[compiler, *flags, "-x", "c", "-c", "-", "-o", objects],
                        [compiler, "-shared", objects, link, f"-Wl,-rpath,{Path(link).parent}", "-o", temporary]]
        for command in commands:
            result = subprocess.run(command, input=SOURCE if "-" in command else None, capture_output=True,
                                    text=True, timeout=300)
            if result.returncode != 0:
                lines = [line for line in result.stderr.strip().splitlines() if "error" in line.lower()]
                first = (lines or result.stderr.strip().splitlines() or ["no output"])[0].strip()
                return f"{Path(compiler).name} failed ({first})"
        os.replace(temporary, target)
        logger.info("built the BlossomRec CPU kernel %s in %.2f s", target, time.perf_counter() - started)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"running {compiler}: {exc}"
    finally:
        for leftover in (temporary, objects):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _function(head_dim: int, block: int, group: int) -> object:
    key = (int(head_dim), int(block), int(group))
    with _LOCK:
        if key not in _LIBRARIES:
            _LIBRARIES[key] = _build(*key)
        return _LIBRARIES[key]


def _layer_ops(head_dim: int):
    """``(rope, windows, openmp)`` of a library built for ``head_dim`` (any block and group size), or None."""
    if not CPU_KERNEL:
        return None
    ops = _OPS.get(int(head_dim))
    if ops is None:
        with _LOCK:
            built = _LIBRARIES.get((int(head_dim), 1, 1))
            if built is None:
                built = _LIBRARIES[(int(head_dim), 1, 1)] = _build(int(head_dim), 1, 1)
        ops = _OPS.get(int(head_dim), built if isinstance(built, str) else None)
        if ops is None:
            ops = _OPS[int(head_dim)] = "the library has no layer ops"
    if isinstance(ops, str):
        _note_once("BlossomRec's CPU kernel is not available (%s): RoPE and the compressor windows run as PyTorch "
                   "ops", ops)
        return None
    return ops


def _eager_cpu_inference(*tensors: torch.Tensor) -> bool:
    """CPU fp32 tensors, no gradient needed, not inside a traced graph: where the layer ops run compiled."""
    return (CPU_KERNEL and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) and not _traced())


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """RoPE of ``x [B, H, T, D]`` with fp32 tables ``[T, D]`` or ``[B, 1, T, D]`` in one pass, the same bits as
    :func:`layers_blossomrec.apply_rotary_reference`; None where it does not apply (the caller runs the PyTorch
    ops): not CPU fp32 inference, an odd head dim, other table shapes, or no kernel."""
    batch, heads, length, dim = x.shape
    if dim % 2 or not _eager_cpu_inference(x, cos, sin) or cos.shape != sin.shape or cos.stride() != sin.stride():
        return None
    if cos.dim() == 2 and cos.shape == (length, dim):
        cos_batch = 0
    elif cos.dim() == 4 and cos.shape == (batch, 1, length, dim):
        cos_batch = cos.stride(0)
    else:
        return None
    if x.stride(-1) != 1 or cos.stride(-1) != 1 or x.numel() == 0:
        return None
    ops = _layer_ops(dim)
    if ops is None:
        return None
    out = torch.empty(batch, heads, length, dim)
    ops[0](max(1, torch.get_num_threads()) if ops[2] else 1, x.data_ptr(), *x.stride()[:3], cos.data_ptr(),
           sin.data_ptr(), cos_batch, cos.stride(-2), out.data_ptr(), batch, heads, length)
    return out


def compressor_windows(key: torch.Tensor, lengths: torch.Tensor, position: torch.Tensor, block: int,
                       window: int) -> torch.Tensor | None:
    """``flatten(window keys + P)`` ``[B, G, M, l*D]`` of the LTIS compressor in one pass (the same bits as
    :func:`attention_patterns.ltis_window_keys` plus ``P``); None where it does not apply (see :func:`rotary`)."""
    batch, groups, length, dim = key.shape
    if not _eager_cpu_inference(key, position) or key.stride(-1) != 1 or position.shape != (groups, window, dim):
        return None
    windows = length // block
    if windows == 0:
        return None
    ops = _layer_ops(dim)
    if ops is None:
        return None
    position = position.contiguous()
    real = lengths.to(torch.long).contiguous()
    out = torch.empty(batch, groups, windows, window * dim)
    ops[1](max(1, torch.get_num_threads()) if ops[2] else 1, key.data_ptr(), *key.stride()[:3], real.data_ptr(),
           position.data_ptr(), out.data_ptr(), batch, groups, length, windows, block, window)
    return out


def kernel_status(head_dim: int, block: int, group: int, num_selected: int = 4) -> str | None:
    """None when the kernel can run this shape, else why not (the sdpa backend then runs its PyTorch layouts)."""
    if not CPU_KERNEL:
        return "switched off (cpu_kernel.CPU_KERNEL = False or BLOSSOM_HF_CPU_KERNEL=0)"
    if num_selected > MAX_SELECTED:
        return f"ltis_num_selected_blocks = {num_selected} > {MAX_SELECTED}"
    if group * max(head_dim, block) > _MAX_TILE:
        return f"group size x max(head_dim, block size) = {group * max(head_dim, block)} > {_MAX_TILE}"
    function = _function(head_dim, block, group)
    return function if isinstance(function, str) else None


def kernel_available(query: torch.Tensor, key: torch.Tensor, pattern: BlossomPattern) -> bool:
    """True when :func:`cpu_kernel_attention` runs for these tensors (CPU, eager mode, a supported shape, built);
    the reason it does not is logged once."""
    if query.device.type != "cpu" or _traced():
        return False
    if not CPU_KERNEL:
        return False
    head_dim, group = query.shape[-1], query.shape[1] // key.shape[1]
    reason = kernel_status(head_dim, pattern.block_size, group, pattern.num_selected_blocks)
    if reason is not None:
        _note_once("BlossomRec's CPU kernel does not run for head_dim %d, block %d, group %d: %s; the sdpa backend "
                   "uses its PyTorch layouts instead (slower, same results)", head_dim, pattern.block_size, group,
                   reason)
        return False
    return True


def _traced() -> bool:
    """Inside torch.compile, torch.export (and so ONNX export) or TorchScript tracing: graphs keep the PyTorch ops."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or bool(exporting and exporting())


def _pool(threads: int) -> ThreadPoolExecutor:
    if _POOL[0] is None or _POOL[1] != threads:
        if _POOL[0] is not None:
            _POOL[0].shutdown(wait=False)
        _POOL[0], _POOL[1] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="blossom_cpu"), threads
    return _POOL[0]


def _offsets(window: int, seq_len: int) -> torch.Tensor:
    key = (int(window), int(seq_len))
    if key not in _OFFSETS:
        if len(_OFFSETS) > 256:
            _OFFSETS.clear()
        with torch.inference_mode(False):
            _OFFSETS[key] = torch.tensor(stis_offsets(window, seq_len), dtype=torch.long)
    return _OFFSETS[key]


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x if x.stride(-1) == 1 else x.contiguous()


def cpu_kernel_attention(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks=None,
                         positions=None) -> torch.Tensor:
    """Same contract as :func:`attention_eager.eager_blossom_attention` (no gradient), ``[B, H, Q, D]`` fp32: every
    position (``positions`` None) or the queries at ``positions [B, Q]``. Call only where :func:`kernel_available`."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    group = heads // groups
    b, n = pattern.block_size, pattern.num_selected_blocks
    function, openmp = _function(head_dim, b, group)
    tiles = _TILES[(head_dim, b, group)]
    out = torch.empty(batch, num_queries, heads, head_dim)
    if out.numel() == 0:
        return out.transpose(1, 2)
    q, k, v, gate = (_last_dim_contiguous(x) for x in (query, key, value, gate))
    pos = None if positions is None else positions.to(torch.long).expand(batch, num_queries).contiguous()
    rows = batch * groups
    num_blocks = -(-seq_len // b)
    threads = max(1, torch.get_num_threads())
    if pos is None or num_queries > TILED_QUERIES:  # the transposed copy of K pays for itself
        k_tiles = torch.empty(rows, num_blocks, head_dim, b)
        tiles(threads if openmp else 1, k.data_ptr(), *k.stride()[:3], k_tiles.data_ptr(), batch, groups, seq_len)
    else:  # the serving path's few queries per row: logits from K's rows
        k_tiles = None
    windows = compressed_key.shape[2]
    ranked = selected_blocks is None and windows > n
    ck = compressed_key.float().contiguous() if ranked else None
    selected = None if selected_blocks is None else selected_blocks.to(torch.long).expand(
        batch, groups, num_queries, n).contiguous()
    real = lengths.to(torch.long).contiguous()
    offsets = _offsets(pattern.stis_window, seq_len)
    sinks = min(pattern.stis_num_sinks, seq_len)
    units = rows * (num_queries if pos is not None else -(-num_queries // b))

    def run(first: int, last: int, threads: int = 1) -> None:
        function(first, last, threads, q.data_ptr(), *q.stride()[:3], k.data_ptr(), *k.stride()[:3], v.data_ptr(),
                 *v.stride()[:3], None if k_tiles is None else k_tiles.data_ptr(),
                 None if ck is None else ck.data_ptr(),
                 None if selected is None else selected.data_ptr(), None if pos is None else pos.data_ptr(),
                 real.data_ptr(), gate.data_ptr(), *gate.stride()[:3], out.data_ptr(), groups, num_queries, seq_len,
                 n, windows, offsets.data_ptr(), offsets.numel(), sinks, float(scaling))

    if threads == 1 or units < 2 or rows * num_queries < SINGLE_THREAD_QUERIES["openmp" if openmp else "threads"]:
        run(0, units)
    elif openmp:  # torch's own OpenMP workers
        run(0, units, threads)
    else:
        threads = min(threads, units)
        step = -(-units // threads)
        shares = [(first, min(units, first + step)) for first in range(0, units, step)]
        futures = [_pool(threads).submit(run, *share) for share in shares[1:]]
        run(*shares[0])
        for future in futures:
            future.result()
    return out.transpose(1, 2)
