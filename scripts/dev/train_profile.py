#!/usr/bin/env python
"""Where an ML-1M training step's time goes: runs ``blossom-hf train`` (the real Trainer, window 200) in this process
for each row, with a callback that times every step (host clock, step end to step end) and profiles a window of
steps in epoch 2 (torch.profiler: host time per op, launches, synchronising calls and their wait, GPU kernel time).

    python scripts/dev/train_profile.py --data-dir DIR --out OUT [--rows blossom full blossom+mlp] [--epochs 3]

A row is an attention type, optionally with ``+flag`` suffixes that turn on ``layers_blossomrec`` switches for that
run (``+mlp``: ``FUSED_COMPRESSOR_MLP_TRAINING``). Prints one summary line per row and writes ``train_profile.txt``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from blossom_hf import trainer as trainer_module
from blossom_hf.commands import train
from blossom_hf.models.blossomrec import layers_blossomrec

FLAGS = {"mlp": "FUSED_COMPRESSOR_MLP_TRAINING"}
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaEventSynchronize",
              "cudaMemcpy")
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernelEx", "cuLaunchKernel", "cudaLaunchKernelExC")


class StepProbe(TrainerCallback):
    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.ends: list[tuple[int, float]] = []
        self.prof = None
        self.table = ""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append((state.global_step, time.perf_counter()))
        if self.prof is not None and state.global_step == self.last:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            self.table = summarise(self.prof, self.last - self.first)
            self.prof = None


def summarise(prof, steps: int) -> str:
    events = prof.events()
    cpu_self: collections.Counter = collections.Counter()
    cpu_calls: collections.Counter = collections.Counter()
    gpu = 0.0
    kernels = 0
    launches = 0
    sync_wait = collections.Counter()
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            gpu += e.device_time_total
            kernels += 1
            continue
        cpu_self[e.name] += e.self_cpu_time_total
        cpu_calls[e.name] += 1
        if e.name in LAUNCH_CALLS:
            launches += 1
        if e.name in SYNC_CALLS:
            sync_wait[e.name] += e.cpu_time_total
    total_self = sum(cpu_self.values())
    lines = [f"  per step: GPU kernels {kernels / steps:.0f} ({gpu / steps / 1000:.2f} ms), launches "
             f"{launches / steps:.0f}, host self time of profiled ops {total_self / steps / 1000:.2f} ms, "
             + ", ".join(f"{k} {cpu_calls[k] / steps:.1f} calls {v / steps / 1000:.2f} ms"
                         for k, v in sync_wait.items())]
    lines.append("  top host ops (self ms per step, calls per step): " + ", ".join(
        f"{k} {v / steps / 1000:.3f} ({cpu_calls[k] / steps:.0f})" for k, v in cpu_self.most_common(40)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--rows", nargs="+", default=["blossom", "full", "blossom+mlp"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--profile", type=int, nargs=2, default=[40, 50], metavar=("FIRST", "LAST"))
    parser.add_argument("--extra", nargs="*", default=[], help="more `blossom-hf train` options for every row")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    lines = [f"{torch.cuda.get_device_name() if gpu else 'CPU'} torch {torch.__version__}"]
    real_init = trainer_module.SequentialRecTrainer.__init__
    for row in args.rows:
        attention_type, *flags = row.split("+")
        saved = {FLAGS[f]: getattr(layers_blossomrec, FLAGS[f]) for f in flags}
        for name in saved:
            setattr(layers_blossomrec, name, True)
        probe = StepProbe(*args.profile)

        def init(self, *a, probe=probe, **k):
            real_init(self, *a, **k)
            self.add_callback(probe)

        trainer_module.SequentialRecTrainer.__init__ = init
        argv = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--max-history-length", "200",
                "--attention-type", attention_type, "--epochs", str(args.epochs), "--eval-protocols", "full",
                "--seed", "1", "--no-progress", "--output-dir", f"/tmp/train_profile_{row}",
                "--overwrite-output-dir", *args.extra]
        try:
            record = train.run(argv)
        finally:
            trainer_module.SequentialRecTrainer.__init__ = real_init
            for name, value in saved.items():
                setattr(layers_blossomrec, name, value)
        epochs = record.get("epochs") or []
        train_s = [e.get("epoch_train_seconds") for e in epochs]
        evals = [e.get("eval_seconds") for e in epochs]
        gaps = [(b[1] - a[1]) * 1000 for a, b in zip(probe.ends, probe.ends[1:], strict=False)
                if not (args.profile[0] <= b[0] <= args.profile[1])]
        steps_per_epoch = len(probe.ends) // max(1, len(epochs))
        later = gaps[steps_per_epoch:]  # epoch 1 compiles
        lines.append(f"\n=== {row}: epochs train s {train_s}, validation s {evals}; {steps_per_epoch} steps/epoch; "
                     f"step-to-step ms (epochs 2+, unprofiled, validation gaps included in the max): median "
                     f"{statistics.median(later):.2f}, p10 {sorted(later)[len(later) // 10]:.2f}, "
                     f"min {min(later):.2f}")
        lines.append(probe.table)
        print("\n".join(lines[-2:]), flush=True)
    (out / "train_profile.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
