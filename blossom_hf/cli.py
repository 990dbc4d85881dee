"""The ``blossom-hf`` console command: ``blossom-hf <command> [options]`` runs ``blossom_hf.commands.<command>``.

A user error (bad option, missing file, refused state, Ctrl-C) prints as one line that names the problem and
the fix, with a non-zero exit status; ``blossom-hf --debug <command> ...`` (or ``BLOSSOM_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys

from . import __version__
from .commands import command_help, command_names, load_command
from .errors import BlossomUserError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
"""``BlossomUserError`` and the other ``ValueError``s; ``FileNotFoundError``, ``PermissionError``, a full disk and
the other ``OSError``s."""
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def usage() -> str:
    lines = [f"usage: blossom-hf [--debug] [--version] <command> [options]   (blossom_hf {__version__})", "",
             "BlossomRec sparse-attention sequential recommender.", "", "commands:"]  # fmt: skip
    for name in command_names():
        text = command_help(name)
        if text is not None:
            lines.append(f"  {name:10s} {text}")
    lines += ["", "blossom-hf <command> --help shows the command's options; --debug shows tracebacks."]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, BlossomUserError) or type(error) is ValueError:
        return text
    return f"{type(error).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Run ``blossom-hf``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("BLOSSOM_DEBUG", "") not in ("", "0")
    while argv and argv[0] in ("--debug", "--version", "-V"):
        flag = argv.pop(0)
        if flag == "--debug":
            debug = True
        else:
            sys.stdout.write(f"blossom-hf {__version__}\n")
            return 0
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage() + "\n")
        return 0 if argv else EXIT_USER_ERROR
    name, rest = argv[0], argv[1:]
    module = load_command(name)
    if module is None:
        known = command_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        sys.stderr.write(f"blossom-hf: error: unknown command {name!r}.{hint} Commands: {', '.join(known)}\n")
        return EXIT_USER_ERROR
    try:
        status = module.main(rest)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"blossom-hf {name}: interrupted (Ctrl-C); completed checkpoints are kept, resume "
                         "with --resume\n")  # fmt: skip
        return EXIT_INTERRUPTED
    except USER_ERRORS as error:
        if debug:
            raise
        for handler in logging.getLogger().handlers:  # the log lines come before the error line
            handler.flush()
        sys.stderr.write(f"blossom-hf {name}: error: {_one_line(error)} (--debug shows the traceback)\n")
        return EXIT_USER_ERROR
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
