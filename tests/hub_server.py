"""Test fixture: a Hugging Face Hub compatible server on localhost that serves exported folders as model repos.

It is `olah` (PyPI, "self-hosted lightweight huggingface mirror"), a maintained third-party implementation of
the Hub's download API (``/api/models/{repo}/revision/{rev}``, ``/{repo}/resolve/{rev}/{file}`` with the
``X-Repo-Commit``/``ETag``/``Content-Length`` headers huggingface_hub checks), run in offline mode with
"local mirrors": every repo is a git repository under ``<root>/mirrors/models/<org>/<name>``. Using it rather
than a hand-written server means the loading path is checked against someone else's reading of the protocol.

Only 127.0.0.1 is used, the server never contacts the real Hub (offline mode), and :meth:`LocalHub.stop` ends
the one process that :meth:`LocalHub.start` started.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

GIT = shutil.which("git")


def olah_missing_reason() -> str | None:
    """Why the server cannot run here (``None`` if it can)."""
    if importlib.util.find_spec("olah") is None:
        return "olah is not installed (pip install -e '.[test]')"
    if GIT is None:
        return "git is not installed (olah serves local mirrors from git repositories)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalHub:
    """``add_repo`` folders, ``start``, point ``HF_ENDPOINT`` at :attr:`endpoint`, ``stop``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.log = self.root / "olah.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_repo(self, repo_id: str, folder: Path) -> str:
        """Copy ``folder`` into a git repository for ``repo_id`` (one commit on ``main``); return the commit."""
        target = self.mirrors / "models" / repo_id
        shutil.copytree(folder, target)
        env = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost", "GIT_COMMITTER_NAME": "test",
               "GIT_COMMITTER_EMAIL": "test@localhost", "HOME": str(self.root), "PATH": "/usr/bin:/bin"}  # fmt: skip
        for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "export"]):
            subprocess.run([GIT, *command], cwd=target, env=env, check=True, capture_output=True)
        head = subprocess.run([GIT, "rev-parse", "HEAD"], cwd=target, env=env, check=True, capture_output=True,
                              text=True)  # fmt: skip
        return head.stdout.strip()

    def start(self, timeout: float = 60.0) -> None:
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'mirrors-path = ["{self.mirrors}"]\nrepos-path = "{self.root / "cache"}"\n'
            "[accessibility]\noffline = true\n"
        )
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.root / "logs")],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/api/models/none/none/revision/main", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # the server answers (404 for the made-up repo)
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer on {self.endpoint} within {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None
