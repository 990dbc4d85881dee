"""Shared by the Triton interpreter test files (test_triton_backend.py, test_triton_layer_ops.py): switch the
interpreter on before triton is first imported, and tell whether it is active in this process.

Triton picks compiled vs interpreted kernels when it is first imported (``import transformers``'s model classes
import it), so ``TRITON_INTERPRET=1`` must be set before that. A test file run alone gets it from its first import
(this module); collected after modules that already imported triton, the files re-run in one fresh interpreter
(``test_triton_backend.py::test_interpreter_suite_in_subprocess``) and their in-process copies are skipped.
"""

from __future__ import annotations

import os
import sys

import pytest

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton")


def _interpreter_active() -> bool:
    zeros = getattr(triton.language, "zeros", None)
    return type(zeros).__name__ == "InterpretedFunction"


IN_PROCESS = _interpreter_active()
needs_interpreter = pytest.mark.skipif(not IN_PROCESS, reason="runs in the subprocess copy of this module")

#: the files the subprocess runs under the interpreter
INTERPRETER_FILES = ("test_triton_backend.py", "test_triton_layer_ops.py")
