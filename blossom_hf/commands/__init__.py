"""The subcommands of ``blossom-hf``: each module here that defines ``HELP`` (one line) and
``main(argv) -> int`` is ``blossom-hf <module name>``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from types import ModuleType

KNOWN_COMMANDS = ("recommend", "train", "evaluate", "finetune", "export", "push", "benchmark")
"""The commands in the order ``blossom-hf --help`` lists them (others that are present follow)."""


def command_names() -> list[str]:
    """Names of the command modules present in this installation."""
    present = {info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")}
    present.discard("options")
    return [name for name in KNOWN_COMMANDS if name in present] + sorted(present - set(KNOWN_COMMANDS))


def load_command(name: str) -> ModuleType | None:
    """The module of command ``name``, or ``None`` when this installation has none (or it is not a command)."""
    if name not in command_names():
        return None
    module = importlib.import_module(f"{__name__}.{name}")
    return module if hasattr(module, "main") and hasattr(module, "HELP") else None


def command_help(name: str) -> str | None:
    """The ``HELP`` line of command ``name``, read from its source without importing it (``--help`` stays fast)."""
    spec = importlib.util.find_spec(f"{__name__}.{name}")
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []  # fmt: skip
        if any(isinstance(t, ast.Name) and t.id == "HELP" for t in targets) and isinstance(node.value, ast.Constant):
            return str(node.value.value)
    module = load_command(name)
    return module.HELP if module is not None else None
