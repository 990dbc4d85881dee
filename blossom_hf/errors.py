"""Errors a user can fix: ``blossom-hf`` prints them as one line (problem and fix) and exits non-zero.

Library code raises :class:`BlossomUserError` (or a built-in ``ValueError``, ``FileNotFoundError`` or
``PermissionError``) for bad input; ``blossom-hf --debug ...`` shows the traceback instead.
"""

from __future__ import annotations


class BlossomUserError(ValueError):
    """Bad input or a state the user can fix; the message names the problem and the fix."""


class NonFiniteError(BlossomUserError):
    """A loss, a weight or a score became NaN or infinite."""


class OutputDirLockedError(BlossomUserError):
    """Another run holds the output folder's lock."""


class ResumeMismatchError(BlossomUserError):
    """``--resume`` with arguments or data that differ from the run being resumed."""


class HubExportError(ValueError):
    """The model, the metrics or the target folder cannot make a valid Hub repository."""
