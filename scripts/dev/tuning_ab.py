"""A/B sections of ``triton_tuning.py`` (same command line, ``--sections layer-ab ops-ab launch``): the layer's fused
ops on and off on the benchmark's layer, model and inference rows, interleaved in one process, and the host time
per launch. Records go to the same ``<out>/tuning.jsonl``. (The catalogue cross-entropy comparison that used to be
the ``ce`` section is ``python -m blossom_hf.benchmarks.fused_ce``.)"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from triton_tuning import TOKENS, _emit, _op_inputs


def layer_ab(out: Path, lengths, rounds: int = 3) -> None:
    """A/B of the fused RoPE on the benchmark's layer rows, interleaved
    in one process: per L, ``rounds`` rounds over every variant, median of the per-round medians."""
    import statistics

    from blossom_hf.benchmarks.gpu import layer_step, measure
    from blossom_hf.models.blossomrec import layers_blossomrec as layers

    variants = [("blossom", "triton", True), ("blossom", "triton", False), ("full", "sdpa", True),
                ("full", "sdpa", False)]
    for seq_len in lengths:
        steps = {v: layer_step(seq_len, v[0], v[1], torch.bfloat16) for v in variants}
        times: dict = {v: [] for v in variants}
        peaks: dict = {}
        for _ in range(rounds):
            for v in variants:
                layers.FUSED_ROPE = v[2]
                res = measure(steps[v][0], 2, 8, steps[v][1])
                times[v].append(res["ms"])
                peaks[v] = res["peak_mib"]
        layers.FUSED_ROPE = True
        for v in variants:
            _emit(out, {"section": "layer-ab", "L": seq_len, "row": f"{v[0]}/{v[1]}", "fused_rope": v[2],
                        "ms": round(statistics.median(times[v]), 3), "rounds": [round(t, 3) for t in times[v]],
                        "peak_mib": round(peaks[v], 1)})
        del steps
        torch.cuda.empty_cache()


def _flags(windows: bool, gate: bool, query_gate: bool, fast_launch: bool, compressor: bool = False) -> dict:
    return dict(FUSED_COMPRESSOR_MLP=compressor, FUSED_COMPRESSOR_MLP_TRAINING=compressor,
                FUSED_COMPRESSOR_WINDOWS=windows, FUSED_GATE=gate, FUSED_QUERY_GATE=query_gate,
                FAST_LAUNCH=fast_launch)


#: ``ops-ab`` variants: flags of ``layers_blossomrec`` (fused compressor windows, gate) per blossom row; a tree
#: without a flag ignores it, so the same section runs on an older checkout as the baseline process
#: (``--ab-variants fused`` there)
OPS_VARIANTS = {
    "fused": _flags(True, True, False, False),
    "ops-off": _flags(False, False, False, False),
    "windows-off": _flags(False, True, False, False),
    "gate-off": _flags(True, False, False, False),
    # v10: the query and the gate in one product (layers_blossomrec.FUSED_QUERY_GATE) and the direct launch of the
    # kept compiled kernels (triton_fast_launch.ENABLED); "fused" above is v9's state
    "v10": _flags(True, True, True, True),
    "v10-no-direct": _flags(True, True, True, False),
    "v10-no-qgate": _flags(True, True, False, True),
    # v11: the whole compressor (windows, fc1, ReLU, fc2) in triton_compressor (layers_blossomrec.FUSED_COMPRESSOR_MLP)
    "v11": _flags(True, True, True, True, compressor=True),
    # the committed default: the fused compressor where no gradient is recorded only
    "v11-serving": {**_flags(True, True, True, True, compressor=True), "FUSED_COMPRESSOR_MLP_TRAINING": False},
    # v12 (call 2 of round v12): v11-serving with 32 windows per compressor program ("v12"; call 2 applied it only
    # below one program per SM, which at the inference batch is every case) and without ("v12-few-off"); slower, not
    # kept in the library
    "v12": {**_flags(True, True, True, True, compressor=True), "FUSED_COMPRESSOR_MLP_TRAINING": False,
            "tc.BLOCK_ROWS": 32},
    "v12-few-off": {**_flags(True, True, True, True, compressor=True), "FUSED_COMPRESSOR_MLP_TRAINING": False,
                    "tc.BLOCK_ROWS": 64},
    # the fused compressor in training too, with dx = dh W1 by a cuBLAS GEMM (the backward kernel gives dh only)
    "v12-train-gemm": {**_flags(True, True, True, True, compressor=True), "tc.DX_BY_GEMM": True},
    # the same with the weights cast once per call as well
    "v12-train-gemm-cast": {**_flags(True, True, True, True, compressor=True), "tc.DX_BY_GEMM": True,
                            "tc.CAST_WEIGHTS": True},
}


_TC_DEFAULTS: dict = {}


def _set_flags(flags: dict) -> None:
    """Set a variant's switches: the layer's module flags, and ``FAST_LAUNCH`` as triton_fast_launch.ENABLED (each
    only where the checkout has it)."""
    from blossom_hf.models.blossomrec import layers_blossomrec as layers

    try:
        from blossom_hf.models.blossomrec import triton_compressor
    except ImportError:  # an older checkout
        triton_compressor = None
    if triton_compressor is not None:  # every variant starts from the module's own compressor knobs
        if not _TC_DEFAULTS:
            _TC_DEFAULTS.update({k: v for k, v in vars(triton_compressor).items()
                                 if k.isupper() and not k.startswith("_")})
        for name, value in _TC_DEFAULTS.items():
            setattr(triton_compressor, name, value)
    for name, value in flags.items():
        if name.startswith("tc."):  # a triton_compressor knob
            if triton_compressor is not None and hasattr(triton_compressor, name[3:]):
                setattr(triton_compressor, name[3:], value)
        elif name == "FAST_LAUNCH":
            try:
                from blossom_hf.models.blossomrec import triton_fast_launch
            except ImportError:  # an older checkout
                continue
            triton_fast_launch.ENABLED = value
        elif hasattr(layers, name):
            setattr(layers, name, value)


def _model_step(seq_len: int, attention_type: str, backend: str, inference: bool, graph: bool = False):
    """The benchmark's model rows (blossom_hf.benchmarks.gpu.model_case / inference_case, bf16 autocast) as a
    step function, so that variants can be interleaved in one process. (Written out here rather than imported: the
    A/B runs this file against older checkouts of the library as its baseline, whose benchmark module has no
    step-returning form.)"""
    from blossom_hf import BlossomRecConfig, BlossomRecModel
    from blossom_hf.benchmarks.gpu import CATALOGUE, _model_inputs

    batch = max(1, TOKENS // seq_len // 4) if inference else TOKENS // seq_len
    config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len, attention_type=attention_type,
                              attn_implementation=backend)
    torch.manual_seed(0)
    model = BlossomRecModel(config).to("cuda")
    ids, labels = _model_inputs(config, batch, seq_len, seq_len + (2 if inference else 1))
    if inference:
        model.eval()
        if graph:  # the benchmark's cuda-graph rows: captured under the flags set now
            from blossom_hf.cuda_graphs import CUDAGraphScorer

            scorer = CUDAGraphScorer(model, batch, seq_len, torch.bfloat16)
            return (lambda: scorer(ids, copy=False)), None

        @torch.inference_mode()
        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(input_ids=ids, output_last_hidden_state=False).logits

        return step, None
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def clear():
        optimizer.zero_grad(set_to_none=True)

    def step():
        clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()

    return step, clear


def ops_ab(out: Path, lengths, model_lengths, inference_lengths, rounds: int = 3, tag: str = "",
           variants=("fused", "ops-off"), graph_lengths=()) -> None:
    """A/B of the fused layer ops (compressor windows, gate; :data:`OPS_VARIANTS`) on the benchmark's layer, model
    and bf16-autocast inference rows, full/sdpa beside them: per case and L, ``rounds`` interleaved rounds over
    the variants, median of the per-round medians. ``tag`` names the checkout (run once per tree)."""
    import statistics

    from blossom_hf.benchmarks.gpu import layer_step, measure

    cases = [("layer", L) for L in lengths] + [("model", L) for L in model_lengths] + [
        ("inference", L) for L in inference_lengths] + [("graph", L) for L in graph_lengths]
    for kind, seq_len in cases:
        rows = [(f"blossom/triton {name}", "blossom", "triton", OPS_VARIANTS[name]) for name in variants]
        rows.append(("full/sdpa", "full", "sdpa", {}))
        steps = {}
        for key, attention_type, backend, flags in rows:
            _set_flags(flags)  # a CUDA graph keeps the kernels its capture launched
            if kind == "layer":
                steps[key] = layer_step(seq_len, attention_type, backend, torch.bfloat16)
            else:
                steps[key] = _model_step(seq_len, attention_type, backend, kind != "model", kind == "graph")
        times: dict = {r[0]: [] for r in rows}
        peaks: dict = {}
        for _ in range(rounds):
            for key, _, _, flags in rows:
                _set_flags(flags)
                res = measure(steps[key][0], 3, 10, steps[key][1])
                times[key].append(res["ms"])
                peaks[key] = res["peak_mib"]
        _set_flags(OPS_VARIANTS["v11-serving"])
        for key, *_ in rows:
            _emit(out, {"section": "ops-ab", "tree": tag, "case": kind, "L": seq_len, "row": key,
                        "ms": round(statistics.median(times[key]), 3), "rounds": [round(t, 3) for t in times[key]],
                        "peak_mib": round(peaks[key], 1)})
        del steps
        torch.cuda.empty_cache()


def launch_overhead(out: Path, calls: int = 300) -> None:
    """Host time per call on tiny inputs (the GPU work is negligible, so the loop is host-bound): the triton
    backend's inference forward (two launches plus its Python), one RoPE launch, the fused gate and compressor
    windows against their PyTorch ops, one PyTorch add."""
    from blossom_hf.models.blossomrec.attention_patterns import ltis_window_keys
    from blossom_hf.models.blossomrec.attention_triton import triton_blossom_attention
    from blossom_hf.models.blossomrec.triton_rope import launch_rope

    (q, k, v, ck, gate, lengths), _, pattern = _op_inputs(32, batch=1)
    q, k, v, ck, gate = (x.detach() for x in (q, k, v, ck, gate))
    cos = torch.rand(32, 16, device="cuda")
    logits = torch.randn(1, 32, 16, device="cuda", dtype=torch.bfloat16)
    position = torch.randn(2, 32, 16, device="cuda")
    cases = {
        "triton_blossom_attention (no grad: select + forward launches)":
            lambda: triton_blossom_attention(q, k, v, ck, gate, lengths, scaling=0.25, pattern=pattern),
        "launch_rope (one launch)": lambda: launch_rope(q, cos, cos),
        "torch.add (one aten op)": lambda: torch.add(q, q),
        "gate: torch sigmoid(float) view transpose":
            lambda: torch.sigmoid(logits.float()).view(1, 32, 8, 2).transpose(1, 2),
        "compressor windows: ltis_window_keys + P (PyTorch ops)":
            lambda: (ltis_window_keys(k, lengths, pattern) + position[None, :, None].to(k.dtype)).flatten(-2),
    }
    try:
        from blossom_hf.models.blossomrec.triton_layer_ops import launch_gate, launch_windows

        cases["gate: triton_layer_ops.launch_gate (one launch)"] = lambda: launch_gate(logits, 8)
        cases["compressor windows: triton_layer_ops.launch_windows (one launch)"] = lambda: launch_windows(
            k, lengths, position, pattern.block_size, pattern.compression_window)
    except ImportError:  # an older checkout (the baseline of an A/B)
        pass
    try:
        from blossom_hf.models.blossomrec import triton_fast_launch
    except ImportError:  # an older checkout
        triton_fast_launch = None
    if triton_fast_launch is not None:  # the same calls through triton's kernel[grid] and the direct launch

        def switched(fn, enabled):
            def call():
                triton_fast_launch.ENABLED = enabled
                return fn()
            return call

        for name in [n for n in cases if "one launch" in n or "select + forward" in n]:
            fn = cases.pop(name)
            cases[name + ", kernel[grid]"] = switched(fn, False)
            cases[name + ", direct launch"] = switched(fn, True)
    with torch.no_grad():
        for name, fn in cases.items():
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            per_call = (time.perf_counter() - t0) / calls
            _emit(out, {"section": "launch", "case": name, "us_per_call": round(per_call * 1e6, 1)})
    if triton_fast_launch is not None:
        triton_fast_launch.ENABLED = True
