"""One launch function for every Triton kernel of the model folder: :func:`launch` ``(kernel, grid, *args,
**kwargs)`` does what ``kernel[grid](*args, **kwargs)`` does, with less host time once a call's specialization has
been seen.

Why: the backend is host-bound at the lengths and batch sizes users train on (a layer step at L <= 2048 waits on
the CPU, docs/BENCHMARKS.md), and triton's own launch path costs ~20-25 us per call on the lent H200 host with the
~50 arguments of the attention kernels (binding every argument, one specialization call each, a cache-key tuple
and string, option parsing), against ~10 us for a PyTorch element-wise op.

How: the first call of a specialization goes through ``kernel[grid](...)`` (compiling if needed) and keeps the
compiled kernel that call returns, under a key made of every argument as triton specializes it: integers, floats,
booleans, strings and None by value (so each of triton's integer specializations, ``== 1``, divisibility by 16 and
32/64-bit, gets its own entry), tensors by dtype and 16-byte alignment of the data pointer, plus the argument names,
the launch options (``num_warps``, ``maxnreg``) and the current device. A later call with the same key launches that
compiled kernel directly (``CompiledKernel.run``, the call triton's ``JITFunction.run`` ends with) on the current
stream, with the arguments in the kernel's order. Each call site must pass an argument with the same Python type
every time: ``True == 1`` and ``1.0 == 1`` in a key, so a parameter given a bool in one call and an int in another
would share an entry (the model folder's call sites keep their types).

Where the direct call is not used (each case takes triton's own path, the same kernel): the interpreter
(``TRITON_INTERPRET=1``), a triton outside :data:`VERIFIED_TRITON` (its ``CompiledKernel.run`` arguments were read
for these versions only; logged once at INFO), a launch hook (a profiler such as proton adds one to triton's
``knobs.runtime.launch_enter_hook`` / ``launch_exit_hook`` chains; empty chains are no hook), ``BLOSSOM_FAST_LAUNCH=0``
in the environment or :data:`ENABLED` set to False, and kernels whose call leaves a parameter to its default.
"""

from __future__ import annotations

import logging
import os
from operator import itemgetter

import torch

logger = logging.getLogger(__name__)

__all__ = ["launch", "ENABLED", "VERIFIED_TRITON", "STATS", "clear_cache"]

#: triton versions (major, minor) whose ``JITFunction.run`` ends in ``kernel.run(grid_0, grid_1, grid_2, stream,
#: kernel.function, kernel.packed_metadata, launch_metadata, enter_hook, exit_hook, *every bound argument)`` (read
#: in the 3.6 and 3.9 sources; 3.6 is the GPU machine's, 3.9 the newest at the time of writing)
VERIFIED_TRITON = ((3, 6), (3, 7), (3, 8), (3, 9))
#: False: every launch takes ``kernel[grid](...)`` (A/B measurements, or a triton that misbehaves)
ENABLED = os.environ.get("BLOSSOM_FAST_LAUNCH", "1").strip().lower() not in ("0", "false", "off", "no")
#: launches by path since import: ``direct`` (the cached compiled kernel) and ``triton`` (``kernel[grid]``)
STATS = {"direct": 0, "triton": 0}
_MAX_ENTRIES = 8192  # distinct specializations kept (integer arguments by value: one entry per length seen)

_CACHE: dict = {}
_STATE: list = []  # [usable: bool, current device fn, current stream fn, knobs.runtime or None] once checked


def _version_ok(triton) -> bool:
    try:
        major, minor = (int(p) for p in triton.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (major, minor) in VERIFIED_TRITON


def _state() -> list:
    if not _STATE:
        from .triton_common import INTERPRET, triton  # here, not at the top: importing the model never imports triton

        usable = triton is not None and not INTERPRET and _version_ok(triton)
        device_fn = stream_fn = runtime = None
        if usable:
            try:
                from triton import knobs
                from triton.runtime.driver import driver

                device_fn = driver.active.get_current_device
                stream_fn = driver.active.get_current_stream
                runtime = knobs.runtime
            except (ImportError, AttributeError, RuntimeError) as err:
                usable = False
                logger.info("Triton kernels launch through kernel[grid] (the direct launch could not set up: %s)",
                            err)
        elif triton is not None and not INTERPRET:
            logger.info("Triton kernels launch through kernel[grid]: triton %s is not among the versions whose "
                        "launcher blossom_hf calls directly (%s)", triton.__version__,
                        ", ".join(f"{a}.{b}" for a, b in VERIFIED_TRITON))
        _STATE[:] = [usable, device_fn, stream_fn, runtime]
    return _STATE


def _hooked(runtime) -> bool:
    """A launch hook is set: triton 3.6+ keeps each as a ``HookChain`` that is never None, empty unless a profiler
    added a function to it (its ``calls``); older knobs hold the function itself or None."""
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


def clear_cache() -> None:
    """Forget every kept compiled kernel (tests; the next call of each specialization takes triton's path)."""
    _CACHE.clear()


_TENSORS = (torch.Tensor, torch.nn.Parameter)
# what a key may hold besides the tensors' (dtype, alignment) pairs; anything else (a tensor subclass, an object)
# is never kept in the cache, so the cache holds no reference to a caller's object
_PLAIN = (int, float, bool, str, type(None), tuple)


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, launching the kept compiled kernel directly where it can (module
    docstring)."""
    state = _STATE or _state()
    if not (ENABLED and state[0]) or _hooked(state[3]):
        STATS["triton"] += 1
        kernel[grid](*args, **kwargs)
        return
    values = (*args, *kwargs.values())
    device = state[1]()
    # tensors by (dtype, 16-byte alignment), everything else by value (one pass, no function call per argument)
    spec = tuple([(v.dtype, v.data_ptr() & 15) if type(v) in _TENSORS else v for v in values])
    key = (id(kernel), device, len(args), tuple(kwargs), spec)
    entry = _CACHE.get(key)
    if entry is None:
        STATS["triton"] += 1
        compiled = kernel[grid](*args, **kwargs)
        if all(type(v) in _PLAIN for v in spec):
            if len(_CACHE) >= _MAX_ENTRIES:
                _CACHE.clear()
            _CACHE[key] = _entry(kernel, compiled, len(args), tuple(kwargs))
        return
    if entry is False:  # this specialization always takes triton's path (a defaulted parameter, no handle)
        STATS["triton"] += 1
        kernel[grid](*args, **kwargs)
        return
    run, function, metadata, order = entry
    STATS["direct"] += 1
    n = len(grid)
    run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, state[2](device), function, metadata, None, None,
        None, *order(values))


def _entry(kernel, compiled, num_positional: int, names: tuple):
    """``(launcher, function handle, packed metadata, picker of the kernel's arguments in its order)`` of a compiled
    kernel, or False where the direct call cannot be made."""
    arg_names = getattr(kernel, "arg_names", None)
    try:
        run, function, metadata = compiled.run, compiled.function, compiled.packed_metadata
    except AttributeError:
        return False
    if arg_names is None or function is None:
        return False
    position = {name: i for i, name in enumerate(arg_names[:num_positional])}
    position.update({name: num_positional + i for i, name in enumerate(names)})
    if any(name not in position for name in arg_names):
        return False  # a parameter left to its default: triton binds it
    picks = [position[name] for name in arg_names]
    order = itemgetter(*picks) if len(picks) > 1 else (lambda values, i=picks[0]: (values[i],))
    return run, function, metadata, order
