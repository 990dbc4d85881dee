"""Presets that fetch themselves: search order, consent, checksums, offline, atomic install.

Everything is served by a local HTTP server (127.0.0.1, ``http.server`` in a thread) from small archives generated
here -- never real MovieLens data, never the network. The registry entries under test are the real ones with only
their download URL, size and checksums replaced by those of the generated archives.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import io
import logging
import os
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from blossom_hf.data import presets
from blossom_hf.data.cli import add_data_arguments, data_spec_from_args
from blossom_hf.data.download import ChecksumMismatchError, DatasetDownloadError, LicenseConsentRequired
from blossom_hf.data.errors import InteractionDataError
from blossom_hf.data.presets import PRESETS, find_preset, resolve_preset
from blossom_hf.data.sources import load_interactions

ENV = ("BLOSSOM_DATA_DIR", "BLOSSOM_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "BLOSSOM_ACCEPT_LICENSE",
       "BLOSSOM_DATASETS_MIRROR", "XDG_CACHE_HOME")  # fmt: skip
# generated GroupLens-style ratings: 3 users, timestamps with a tie (user 2) to check file order is kept
RATINGS = "1::10::5::978300760\n1::20::3::978300761\n2::30::4::978301000\n2::10::2::978301000\n3::20::1::978302000\n"


class _Server:
    """Files of one folder over HTTP on 127.0.0.1, counting the requests."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                if self.path.startswith("/truncated/"):  # announce more bytes than are sent, then hang up
                    body = (folder / self.path.rsplit("/", 1)[1]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) + 1000))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a short poll interval: shutdown() waits up to one interval (0.5 s by default, at every test)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    running = _Server(served)
    running.folder = served
    yield running
    running.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private user cache; no data folder, consent or offline switch inherited from the caller."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BLOSSOM_HF_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "datasets"


def _zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, text in members.items():
            bundle.writestr(name, text)
    return buffer.getvalue()


def _serve_preset(monkeypatch, server, name: str, payload: bytes, filename: str, **changes) -> presets.DatasetPreset:
    """Serve ``payload`` and point preset ``name``'s download at it (real size/checksums of the payload)."""
    (server.folder / filename).write_bytes(payload)
    source = dataclasses.replace(
        PRESETS[name].download, url=f"{server.url}/{filename}", filename=filename, size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(), md5=hashlib.md5(payload).hexdigest(),
    )  # fmt: skip
    source = dataclasses.replace(source, **changes)
    preset = dataclasses.replace(PRESETS[name], download=source)
    monkeypatch.setattr(presets, "PRESETS", {**PRESETS, name: preset})
    return preset


def _ml1m_zip() -> bytes:
    return _zip({"ml-1m/ratings.dat": RATINGS, "ml-1m/movies.dat": "10::A (2000)::Drama\n",
                 "ml-1m/users.dat": "1::F::1::10::48067\n", "ml-1m/README": "generated for a test\n"})  # fmt: skip


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith((".part", ".download")))


def test_grouplens_zip_downloads_once_verified_then_reads_from_the_cache(home, server, monkeypatch, caplog):
    _serve_preset(monkeypatch, server, "ml-1m", _ml1m_zip(), "ml-1m.zip")
    with caplog.at_level(logging.WARNING, logger="blossom_hf.data.download"):
        got = load_interactions("ml-1m", accept_license=True)
    assert server.requests == ["/ml-1m.zip"]
    assert "MovieLens licence" in caplog.text and "do not redistribute" in caplog.text
    assert len(got) == 5 and got.source["preset"] == "ml-1m" and got.source["layout"] == "ml-1m/ratings.dat"
    assert got.source["found_in"] == "cache" and got.source["format"] == "movielens"
    assert (home / "ml-1m" / "movies.dat").is_file() and (home / "ml-1m" / ".blossom_download.json").is_file()
    assert not (home / "ml-1m.zip").exists() and _leftovers(home) == []
    again = load_interactions("ml-1m")  # found in the cache: no request, no consent needed
    assert server.requests == ["/ml-1m.zip"] and len(again) == 5


def test_movielens_needs_consent_before_any_request(home, server, monkeypatch):
    _serve_preset(monkeypatch, server, "ml-1m", _ml1m_zip(), "ml-1m.zip")
    with pytest.raises(LicenseConsentRequired) as error:
        resolve_preset("ml-1m")
    message = str(error.value)
    assert "\n" not in message and "--accept-license" in message and "BLOSSOM_ACCEPT_LICENSE=movielens" in message
    assert "research use only" in message and isinstance(error.value, PermissionError)
    assert server.requests == [] and not home.joinpath("ml-1m").exists()
    monkeypatch.setenv("BLOSSOM_ACCEPT_LICENSE", "movielens")
    assert resolve_preset("ml-1m").path == home / "ml-1m" / "ratings.dat"


@pytest.mark.parametrize("damage", ["sha256", "size", "md5"])
def test_checksum_mismatch_is_one_line_and_saves_nothing(home, server, monkeypatch, damage):
    payload = _ml1m_zip()
    wrong = {"sha256": {"sha256": "0" * 64}, "size": {"size": len(payload) + 1}, "md5": {"md5": "f" * 32}}[damage]
    _serve_preset(monkeypatch, server, "ml-1m", payload, "ml-1m.zip", **wrong)
    with pytest.raises(ChecksumMismatchError, match=f"checksum mismatch for ml-1m.zip .*{damage}|checksum mismatch.*"
                       "bytes, expected") as error:  # fmt: skip
        load_interactions("ml-1m", accept_license=True)
    assert "\n" not in str(error.value) and "nothing was saved" in str(error.value)
    assert not (home / "ml-1m").exists() and _leftovers(home) == [] and server.requests == ["/ml-1m.zip"]


def test_unreachable_and_offline_give_clear_errors(home, server, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    _serve_preset(monkeypatch, server, "beauty", b"1 2 3\n", "Beauty.txt", url=f"http://127.0.0.1:{closed}/Beauty.txt")
    with pytest.raises(DatasetDownloadError, match="offline or unreachable") as error:
        resolve_preset("beauty")
    assert "\n" not in str(error.value) and "--data-dir" in str(error.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetDownloadError, match=r"\$HF_HUB_OFFLINE=1 forbids downloading"):
        resolve_preset("beauty")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _serve_preset(monkeypatch, server, "beauty", b"1 2 3\n", "Beauty.txt", url=f"{server.url}/gone/Beauty.txt")
    with pytest.raises(DatasetDownloadError, match="HTTP 404"):
        resolve_preset("beauty")
    truncated = f"{server.url}/truncated/Beauty.txt"
    _serve_preset(monkeypatch, server, "beauty", b"1 2 3\n" * 50, "Beauty.txt", url=truncated)
    with pytest.raises(DatasetDownloadError, match="broke off after 150 of 1300 bytes"):
        resolve_preset("beauty")
    assert _leftovers(home) == [] and not (home / "beauty").exists()


def test_single_file_source_through_a_mirror(home, server, monkeypatch):
    payload = b"u1 5 6 7\nu2 6 7\n"
    _serve_preset(monkeypatch, server, "beauty", payload, "Beauty.txt", url="http://127.0.0.1:9/unreachable/Beauty.txt")
    monkeypatch.setenv("BLOSSOM_DATASETS_MIRROR", server.url + "/")
    got = load_interactions("beauty")  # Amazon terms need no consent
    assert server.requests == ["/Beauty.txt"] and len(got) == 5 and got.source["format"] == "sequences"
    assert (home / "beauty" / "Beauty.txt").read_bytes() == payload


def test_search_order_and_layouts(home, tmp_path, monkeypatch):
    env_dir, given = tmp_path / "env", tmp_path / "given"
    (env_dir / "ml-1m").mkdir(parents=True)
    (env_dir / "ml-1m" / "ratings.dat").write_text(RATINGS)  # the GroupLens layout under $BLOSSOM_DATA_DIR
    monkeypatch.setenv("BLOSSOM_DATA_DIR", str(env_dir))
    found = find_preset("ml-1m")
    assert found.origin == "$BLOSSOM_DATA_DIR" and found.format == "movielens"
    got = load_interactions("ml-1m", download=False)
    # ties (user 2, equal timestamps) keep file order; the reader sees every line
    assert got.dataset["item_id"] == ["10", "20", "30", "10", "20"] and got.source["layout"] == "ml-1m/ratings.dat"
    (given / "ml-1m").mkdir(parents=True)
    (given / "ml-1m" / "ratings_ordered.tsv.gz").write_bytes(b"")  # --data-dir comes first
    assert find_preset("ml-1m", given).origin == "--data-dir"
    assert find_preset("ml-1m", given).layout.relative_path == "ml-1m/ratings_ordered.tsv.gz"
    inside = find_preset("ml-1m", env_dir / "ml-1m")  # the dataset's own folder given instead of its parent
    assert inside.origin == "--data-dir" and inside.path == env_dir / "ml-1m" / "ratings.dat"
    with pytest.raises(InteractionDataError, match="folder holding the 'ml-1m' dataset; read it as a preset"):
        load_interactions(str(env_dir / "ml-1m"))  # a GroupLens folder given as a path
    monkeypatch.delenv("BLOSSOM_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="ml-1m/ratings_ordered.tsv.gz or ml-1m/ratings.dat in: cache") as error:
        resolve_preset("ml-1m", download=False)
    assert str(home) in str(error.value) and "\n" not in str(error.value)


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("BLOSSOM_HF_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert presets.dataset_cache_dir() == tmp_path / "xdg" / "blossom_hf" / "datasets"
    monkeypatch.setenv("BLOSSOM_HF_HOME", str(tmp_path / "bh"))
    assert presets.dataset_cache_dir() == tmp_path / "bh" / "datasets"
    monkeypatch.delenv("BLOSSOM_DATA_DIR", raising=False)
    assert presets.default_data_root() == tmp_path / "bh" / "datasets"  # never the repository's surroundings


def test_command_line_downloads_with_accept_license(home, server, monkeypatch):
    _serve_preset(monkeypatch, server, "ml-1m", _ml1m_zip(), "ml-1m.zip")
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, "ml-1m")
    with pytest.raises(LicenseConsentRequired):
        data_spec_from_args(parser.parse_args([]))
    with pytest.raises(FileNotFoundError, match="allow the download"):
        data_spec_from_args(parser.parse_args(["--no-download"]))
    spec = data_spec_from_args(parser.parse_args(["--accept-license"]))
    assert spec.path == "ml-1m" and (home / "ml-1m" / "ratings.dat").is_file()


def test_registry_entries_are_complete():
    for name, preset in PRESETS.items():
        source = preset.download
        assert source is not None and source.url.startswith("https://") and source.size > 0, name
        assert len(source.sha256) == 64 and source.checksum_source, name
        assert any(layout.relative_path in source.provides for layout in preset.layouts), name
        assert preset.card.key == name and preset.terms.line
    assert PRESETS["ml-1m"].terms.requires_consent and PRESETS["ml-100k"].terms.requires_consent
    assert not PRESETS["beauty"].terms.requires_consent
    # the old names stay importable where they were
    from blossom_hf.data.formats import PRESETS as formats_presets
    from blossom_hf.hub import _ML1M_SAMPLE_HISTORIES, KNOWN_DATASETS

    assert formats_presets is PRESETS and KNOWN_DATASETS["ml-1m"] is PRESETS["ml-1m"].card
    assert [list(h) for h in PRESETS["ml-1m"].sample_histories] == list(_ML1M_SAMPLE_HISTORIES)


def test_data_spec_reads_a_downloaded_grouplens_ml1m(home, server, monkeypatch):
    from blossom_hf.data import DataSpec

    _serve_preset(monkeypatch, server, "ml-1m", _ml1m_zip(), "ml-1m.zip")
    with pytest.raises(LicenseConsentRequired):
        DataSpec(path="ml-1m").load()
    monkeypatch.setenv("BLOSSOM_ACCEPT_LICENSE", "yes")
    data = DataSpec(path="ml-1m").load()
    assert data.n_users == 3 and data.n_interactions == 5 and data.metadata["source"]["preset"] == "ml-1m"
    assert data.metadata["source"]["layout"] == "ml-1m/ratings.dat"


def test_registry_collator_and_hub_import_without_the_datasets_package():
    # the GPU machines have no `datasets`; the registry, the downloader, the collator and hub.py must not need it
    import subprocess
    import sys

    code = (
        "import sys\nsys.modules['datasets'] = None\n"
        "import blossom_hf.hub\nfrom blossom_hf.data import PRESETS, SequenceCollator, resolve_preset\n"
        "import blossom_hf.data.download\nprint(PRESETS['ml-1m'].download.filename, SequenceCollator(8).padding)\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ml-1m.zip", "longest"]


def test_datasets_command_lists_finds_and_downloads(home, server, monkeypatch, capsys, tmp_path):
    from blossom_hf.commands import datasets as command

    _serve_preset(monkeypatch, server, "ml-1m", _ml1m_zip(), "ml-1m.zip")
    assert command.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert f"user cache: {home}" in listed and listed.count("not on disk") == len(PRESETS)
    with pytest.raises(FileNotFoundError, match="not found"):
        command.main(["path", "ml-1m"])
    with pytest.raises(LicenseConsentRequired):
        command.main(["download", "ml-1m", "--no-progress"])
    assert command.main(["download", "ml-1m", "--accept-license", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"{home / 'ml-1m' / 'ratings.dat'} (cache; format movielens)"
    assert command.main(["path", "ml-1m"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "ml-1m" / "ratings.dat")
    assert server.requests == ["/ml-1m.zip"]
