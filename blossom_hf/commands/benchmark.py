"""``blossom-hf benchmark <gpu|cpu|data|fused_ce> ...``: the project's benchmarks (``blossom_hf.benchmarks.<what>``)."""

from __future__ import annotations

import importlib
import sys

from ..errors import BlossomUserError

HELP = "run a benchmark: gpu (attention/model speed), cpu (serving), data (preprocessing scale), fused_ce (losses)"
BENCHMARKS = {
    "gpu": "layer, model and inference speed of the attention backends on a CUDA GPU",
    "cpu": "CPU serving speed (recommend() latency and throughput)",
    "data": "preprocessing speed and memory at scale",
    "fused_ce": "the catalogue cross-entropy: chunked vs Liger-Kernel vs cut-cross-entropy on a CUDA GPU",
}


def usage() -> str:
    lines = ["usage: blossom-hf benchmark <what> [options]", "", "benchmarks:"]
    lines += [f"  {name:6s} {text}" for name, text in BENCHMARKS.items()]
    lines += ["", "blossom-hf benchmark <what> --help shows its options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage() + "\n")
        return 0 if argv else 2
    what, rest = argv[0], argv[1:]
    if what not in BENCHMARKS:
        raise BlossomUserError(f"unknown benchmark {what!r}; choose one of {', '.join(BENCHMARKS)}")
    module_name = f"blossom_hf.benchmarks.{what}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name not in (module_name, "blossom_hf.benchmarks"):
            raise
        raise BlossomUserError(
            f"the {what} benchmark ({module_name}) is not part of this installation of blossom_hf; install a "
            "version that ships it"
        ) from None
    if not hasattr(module, "main"):
        raise BlossomUserError(f"{module_name} has no main(argv); it cannot run as blossom-hf benchmark {what}")
    result = module.main(rest)
    return result if isinstance(result, int) else 0
