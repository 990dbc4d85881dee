#!/usr/bin/env python
"""Where the serving-path forward's wall time goes on one GPU (``blossom_hf.benchmarks.gpu.inference_case``'s model
and batch): per row, the wall time (CUDA events, as the benchmark), the host time to enqueue one forward (perf_counter,
no sync), the synchronising calls inside one forward (``torch.cuda.set_sync_debug_mode``, with the line that made
each), the aten ops and CUDA kernels per forward, and the host time per module and per model step (forward hooks).

    python scripts/dev/host_time.py --out OUT/host_time.txt [--lengths 200 1024] [--rows full:sdpa blossom:triton]

A row is ``attention_type:backend``. Both bf16 autocast and fp32 are run. Host-bound means host ~ wall.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
import traceback
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from blossom_hf import BlossomRecConfig, BlossomRecModel
from blossom_hf.benchmarks.gpu import CATALOGUE, TOKENS, _model_inputs, step_times
from blossom_hf.models.blossomrec import inputs_blossomrec, modeling_blossomrec


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def _hooks(model: torch.nn.Module, totals: dict) -> list:
    handles = []
    wanted = ("self_attn", "compressor", "mlp", "attn_norm", "mlp_norm", "item_embeddings", "embedding_norm",
              "k_proj", "v_proj", "o_proj", "q_proj", "gate_proj")
    for name, module in model.named_modules():
        short = name.split(".")[-1]
        if short not in wanted:
            continue
        key = short if not name.startswith("layers.") else f"layer.{short}"

        def pre(mod, args, key=key):
            mod._t0 = time.perf_counter()

        def post(mod, args, out, key=key):
            totals[key] += time.perf_counter() - mod._t0

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def _wrap(module, name: str, totals: dict):
    real = getattr(module, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0

    setattr(module, name, timed)
    return real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 1024])
    parser.add_argument("--rows", nargs="+", default=["full:sdpa", "blossom:triton"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lines = [f"{torch.cuda.get_device_name()} torch {torch.__version__}"]
    for seq_len in args.lengths:
        batch = max(1, TOKENS // seq_len // 4)
        for fp32 in (False, True):
            for row in args.rows:
                attention_type, _, backend = row.partition(":")
                config = BlossomRecConfig(vocab_size=CATALOGUE, max_history_length=seq_len,
                                          attention_type=attention_type, attn_implementation=backend)
                torch.manual_seed(0)
                model = BlossomRecModel(config).cuda().eval()
                ids, _ = _model_inputs(config, batch, seq_len, seq_len + 2)

                @torch.inference_mode()
                def step(model=model, ids=ids, fp32=fp32):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not fp32):
                        return model(input_ids=ids, output_last_hidden_state=False).logits

                for _ in range(5):
                    step()
                torch.cuda.synchronize()
                wall = statistics.median(step_times(step, args.steps))
                hosts = []
                for _ in range(args.steps):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step()
                    hosts.append((time.perf_counter() - t0) * 1000)
                torch.cuda.synchronize()
                host = statistics.median(hosts)
                # syncs
                syncs: list[str] = []
                torch.cuda.set_sync_debug_mode("warn")
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    step()
                torch.cuda.set_sync_debug_mode(0)
                for w in caught:
                    if "synchroniz" in str(w.message):
                        syncs.append(f"{w.filename}:{w.lineno}")
                # ops per forward
                with _CountOps() as counter:
                    step()
                ops = sum(counter.counts.values())
                # kernels per forward
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    step()
                    torch.cuda.synchronize()
                kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                gpu_ms = sum(e.device_time_total for e in kernels) / 1000
                # host time per module / step
                totals: dict = collections.defaultdict(float)
                handles = _hooks(model, totals)
                checks = next(n for n in ("checked_input_ids", "validate_input_ids") if hasattr(inputs_blossomrec, n))
                reals = {n: _wrap(inputs_blossomrec, n, totals) for n in (checks, "compact_histories")}
                for n in (checks, "compact_histories"):
                    setattr(modeling_blossomrec, n, getattr(inputs_blossomrec, n))
                real_score = BlossomRecModel.score_items

                def score(self, *a, real_score=real_score, totals=totals, **k):
                    t0 = time.perf_counter()
                    try:
                        return real_score(self, *a, **k)
                    finally:
                        totals["score_items"] += time.perf_counter() - t0

                BlossomRecModel.score_items = score
                for _ in range(args.steps):
                    torch.cuda.synchronize()
                    step()
                torch.cuda.synchronize()
                BlossomRecModel.score_items = real_score
                for n, f in reals.items():
                    setattr(inputs_blossomrec, n, f)
                    setattr(modeling_blossomrec, n, f)
                for h in handles:
                    h.remove()
                mode = "fp32" if fp32 else "bf16-autocast"
                lines.append(f"\n=== L={seq_len} B={batch} {row} {mode}: wall {wall:.2f} ms, host {host:.2f} ms "
                             f"GPU kernels {len(kernels)} "
                             f"({gpu_ms:.2f} ms), aten ops {ops}, syncs {len(syncs)}")
                for s in syncs:
                    lines.append(f"  sync at {s}")
                per = {k: v / args.steps * 1000 for k, v in totals.items()}
                lines.append("  host ms per forward (hooks; nested entries overlap): " + ", ".join(
                    f"{k} {v:.3f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])))
                lines.append("  aten ops: " + ", ".join(f"{k} {v}" for k, v in counter.counts.most_common(30)))
                print(lines[-4] if len(lines) >= 4 else "", flush=True)
                del model, step
                torch.cuda.empty_cache()
    text = "\n".join(lines)
    with open(args.out, "w") as handle:
        handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        raise
