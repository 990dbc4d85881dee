"""Test helper: run a script in a process of its own, forked from a multiprocessing fork server that imported the
package once per test session (not a fresh interpreter each time: ``import transformers`` alone takes ~3 s).

Used where a test needs a process it can SIGKILL (fault injection) but not a clean interpreter. Tests that use it
share one worker (``FORKED``), so the server is started once.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

#: modules the fork server imports before it forks (what the scripts need; the same list everywhere, since a
#: worker has one fork server)
PRELOAD = ["blossom_hf.hub", "blossom_hf.cli", "blossom_hf.commands.train"]

#: the mark of the tests that run scripts here (one xdist worker: one fork server)
FORKED = pytest.mark.xdist_group("forked")


def run_forked(script: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
               timeout: float = 300) -> tuple[int | None, str]:
    """Run ``script`` with ``sys.argv[1:] = argv`` and ``os.environ`` updated from ``env``, its stdout and stderr into
    ``log``; returns its exit code (``-signal`` when killed) and what it wrote."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    code = (f"import os, sys\nos.environ.update({dict(env or {})!r})\nsys.argv = {['-c', *argv]!r}\n"
            f"sys.stdout = sys.stderr = open({str(log)!r}, 'w', buffering=1)\n" + script)
    process = context.Process(target=exec, args=(code, {"__name__": "__main__"}))
    process.start()
    process.join(timeout=timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
    return process.exitcode, log.read_text() if log.is_file() else ""
