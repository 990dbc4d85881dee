"""Saves and exports never leave a folder half-written (issue 10, items 2 and 7): staging + swap, read-only
targets refused before anything changes, a failed write keeps the old folder, SIGKILL at fixed moments of an
export (fault injection in a forked process, tests/forked.py) loses nothing and the next export works,
non-finite weights are never written."""

from __future__ import annotations

import errno
import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from forked import FORKED, run_forked

from blossom_hf import BlossomRecModel, ItemVocabulary
from blossom_hf.hub import HubExportError, check_sample_scores, export_hub_folder
from blossom_hf.models.blossomrec import saving_blossomrec
from blossom_hf.models.blossomrec.item_vocabulary import ItemVocabulary as _Vocabulary

RECORD = {"test": {"full": {"hit@10": 0.1, "ndcg@10": 0.05, "users": 3}}, "command": ["blossom-hf", "train"]}


def _model(seed: int = 0) -> BlossomRecModel:
    torch.manual_seed(seed)
    model = BlossomRecModel(tiny_config()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.vocabulary = ItemVocabulary(list(range(1, 60)))
    return model


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.glob(f".{folder.name}.*"))


@pytest.fixture
def saved(tmp_path):
    model = _model()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    return model, folder


def test_a_failed_save_keeps_the_old_folder(saved, monkeypatch):
    """A full disk after the weights were written: the old folder is untouched and nothing is left behind."""
    model, folder = saved
    before = _snapshot(folder)

    def full_disk(self, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_Vocabulary, "save", full_disk)
    with torch.no_grad():
        model.item_embeddings.weight.mul_(2)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(folder)
    assert _snapshot(folder) == before and _leftovers(folder) == []
    assert BlossomRecModel.from_pretrained(folder).vocabulary == model.vocabulary


@pytest.mark.parametrize("locked", ["folder", "item_vocabulary.json"])
def test_a_read_only_target_is_refused_before_anything_changes(saved, monkeypatch, locked):
    model, folder = saved
    before = _snapshot(folder)
    path = folder if locked == "folder" else folder / locked
    if os.geteuid() == 0:  # root writes anywhere: present the permission bits as a user would see them
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == path and mode & os.W_OK
                            else real_access(p, mode, **kw))  # fmt: skip
    else:
        path.chmod(0o555 if locked == "folder" else 0o444)
    try:
        with torch.no_grad():
            model.item_embeddings.weight.mul_(2)
        with pytest.raises(PermissionError, match="read-only: nothing was changed"):
            model.save_pretrained(folder)
    finally:
        path.chmod(0o755 if locked == "folder" else 0o644)
    assert _snapshot(folder) == before and _leftovers(folder) == []


def test_a_save_over_a_folder_keeps_other_files_and_drops_those_of_the_old_weights(saved):
    model, folder = saved
    (folder / "data_spec.json").write_text("{}")
    (folder / "sample_scores.json").write_text("{}")  # describes the old weights
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")
    model.vocabulary = None
    model.save_pretrained(folder)
    names = set(_snapshot(folder))
    assert "data_spec.json" in names and "README.md" in names
    assert not {"sample_scores.json", "item_vocabulary.json", "model-00001-of-00002.safetensors"} & names
    assert BlossomRecModel.from_pretrained(folder).vocabulary is None


def test_a_save_into_a_trainer_output_dir_keeps_its_subfolders(tmp_path):
    """A folder with sub-folders (checkpoint-*, runs/) is never swapped: its files are replaced one by one."""
    out = tmp_path / "output_dir"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (out / "all_results.json").write_text("{}")
    first, second = _model(0), _model(1)
    first.save_pretrained(out)
    second.save_pretrained(out)
    assert (out / "checkpoint-10" / "trainer_state.json").is_file() and (out / "all_results.json").is_file()
    loaded = BlossomRecModel.from_pretrained(out)
    assert torch.equal(loaded.item_embeddings.weight, second.item_embeddings.weight) and _leftovers(out) == []


def test_non_finite_weights_are_never_saved_or_exported(tmp_path):
    model = _model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to save the model: 1 weight tensor\(s\) hold NaN or inf"):
        model.save_pretrained(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    with pytest.raises(HubExportError, match="refusing to save the checkpoint: .* NaN or inf .*lower the learning"):
        export_hub_folder(model, tmp_path / "export", RECORD)
    assert not (tmp_path / "export").exists() and _leftovers(tmp_path / "export") == []


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    import blossom_hf.hub as hub
    from blossom_hf import BlossomRecModel
    from blossom_hf.models.blossomrec import saving_blossomrec as saving

    moment, source, target = sys.argv[1], sys.argv[2], sys.argv[3]
    record = json.loads(sys.argv[4])
    model = BlossomRecModel.from_pretrained(source)
    with torch.no_grad():
        model.item_embeddings.weight[1:].mul_(1.5)  # the new export differs from the old one

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    armed = {"on": False, "renames": 0}
    outer = hub.replace_folder

    def arm(*args, **kwargs):  # the export's own swap (its save_pretrained swaps a folder of its own first)
        armed["on"] = True
        return outer(*args, **kwargs)

    hub.replace_folder = arm
    if moment == "writing":  # weights and code staged, card not yet written
        hub.build_model_card = die
    elif moment == "staged":  # everything staged and verified, just before the swap
        hub.replace_folder = die
    elif moment == "after-exchange":  # the folders swapped, the old copy not yet deleted
        real_exchange = saving.exchange
        def exchange(a, b):
            done = real_exchange(a, b)
            if armed["on"] and done:
                die()
            return done
        saving.exchange = exchange
    elif moment == "between-renames":  # no RENAME_EXCHANGE here: old folder renamed away, new one not yet in
        saving.exchange = lambda a, b: False
        real_rename = os.rename
        def rename(a, b):
            if armed["on"]:
                armed["renames"] += 1
                if armed["renames"] == 2:
                    die()
            return real_rename(a, b)
        os.rename = rename
    elif moment == "save":  # a plain save_pretrained over the folder, killed after the weights were written
        from blossom_hf.models.blossomrec.item_vocabulary import ItemVocabulary
        ItemVocabulary.save = die
        model.save_pretrained(target)
    hub.export_hub_folder(model, target, record, overwrite=True)
    print("NOT KILLED")
    """
)


@FORKED
@pytest.mark.parametrize("moment", ["writing", "staged", "after-exchange", "between-renames", "save"])
def test_an_export_killed_at_any_moment_loses_nothing(tmp_path, moment):
    model = _model()
    source = tmp_path / "best_model"
    model.save_pretrained(source)
    target = tmp_path / "export" / "blossomrec-tiny"
    export_hub_folder(model, target, RECORD)
    old = _snapshot(target)
    returncode, output = run_forked(KILLER, [moment, str(source), str(target), json.dumps(RECORD)],
                                    tmp_path / "killer.log")
    assert returncode == -signal.SIGKILL, f"not killed ({returncode}): {output[-2000:]}"
    if moment == "after-exchange":
        new = _snapshot(target)
        assert new != old and _leftovers(target), "the new folder is complete; the old copy is still beside it"
        reloaded = BlossomRecModel.from_pretrained(target)
        assert check_sample_scores(reloaded, json.loads(new["sample_scores.json"])) == []
    elif moment == "between-renames":
        assert not target.exists() and _leftovers(target), "only here can a crash leave no target: a backup stays"
        saving_blossomrec.recover_folder(target)
        assert _snapshot(target) == old, "the next save or export puts the old folder back"
    else:
        assert _snapshot(target) == old, "the old export is untouched"
        assert check_sample_scores(BlossomRecModel.from_pretrained(target), json.loads(old["sample_scores.json"])) == []
    export_hub_folder(model, target, RECORD, overwrite=True)  # the next export works and tidies up
    assert _leftovers(target) == [] and _snapshot(target)["model.safetensors"] == old["model.safetensors"]


def test_an_export_never_deletes_a_live_exports_staging_folder(saved, tmp_path):
    model, _ = saved
    target = tmp_path / "exports" / "blossomrec-tiny"
    target.parent.mkdir()
    other = target.parent / f".{target.name}.export.staging-{os.getpid()}-0000abcd"  # a running export's
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"in progress")
    dead = target.parent / f".{target.name}.export.staging-999999999-0000dead"  # a killed one's
    dead.mkdir()
    export_hub_folder(model, target, RECORD)
    assert (other / "model.safetensors").read_bytes() == b"in progress" and not dead.exists()


def test_an_export_through_a_symlink_replaces_the_linked_folder(tmp_path):
    """model_cards/blossomrec-ml1m links to the package's checkpoint: re-exporting it keeps the link."""
    model = _model()
    real = tmp_path / "package" / "blossomrec-tiny"
    export_hub_folder(model, real, RECORD)
    link = tmp_path / "model_cards" / "blossomrec-tiny"
    link.parent.mkdir()
    link.symlink_to(real)
    with torch.no_grad():
        model.item_embeddings.weight.mul_(2)
    export_hub_folder(model, link, RECORD, overwrite=True)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert torch.equal(BlossomRecModel.from_pretrained(real).item_embeddings.weight, model.item_embeddings.weight)
    assert _leftovers(real) == [] and _leftovers(link) == []
