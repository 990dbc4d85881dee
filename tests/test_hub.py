"""Hub export: the folder's files, the model card and its model-index, loading through both AutoModel routes
(library; trust_remote_code without blossom_hf), through a Hub-compatible server and then offline from the
cache, damaged files, `blossom-hf push --dry-run` checks, model.push_to_hub, and every bundled checkpoint
(artefacts only; loaded through a temporary Hub folder that gets the package's code)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hub_server import LocalHub, olah_missing_reason
from hub_testing import (
    REPO,
    USER_PREFIX,
    bundled_checkpoints,
    hub_folder,
    run_loader,
    run_loaders,
    tiny_training_run,
    write_interactions,
)
from huggingface_hub import ModelCard
from transformers import AutoModel

import blossom_hf  # noqa: F401  (registers the Auto classes)
from blossom_hf.commands import push as push_command
from blossom_hf.hub import (
    BUNDLED_REPO_IDS,
    DEFAULT_TAGS,
    HUB_DATA_FILES,
    KNOWN_DATASETS,
    CardOptions,
    HubExportError,
    build_model_card,
    check_folder_contents,
    check_sample_scores,
    compare_sample_scores,
    export_hub_folder,
    reported_test_metrics,
)

pytestmark = pytest.mark.xdist_group("test_hub")

REPO_ID = "org/blossomrec-tiny"
PACKAGE_CODE = {p.name for p in (Path(blossom_hf.__file__).parent / "models" / "blossomrec").glob("*.py")} - {
    "__init__.py"
}
EXPECTED_FILES = set(HUB_DATA_FILES) | PACKAGE_CODE


@pytest.fixture(scope="session")  # session: the slow tests run first (conftest), which splits the module
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_run")
    log = write_interactions(root / "log.csv")
    model, record = tiny_training_run(root / "run", log)
    return root, model, record


@pytest.fixture(scope="session")
def exported(tiny_run):
    root, model, _ = tiny_run
    return export_hub_folder(model, root / "export" / "blossomrec-tiny", root / "run" / "metrics.json", repo_id=REPO_ID)


# The remote-code route of the export and of every bundled checkpoint, loaded in one fresh interpreter (its
# start-up is most of the cost). Every test of this module runs on one pytest-xdist worker, in one block, so
# the module fixtures above (a training run, its export) and this one are built once per suite run.
REMOTE_LOADS = pytest.mark.xdist_group("test_hub")


@pytest.fixture(scope="session")
def remote_loads(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_loads")
    folders = {"export": exported} | {folder.name: hub_folder(folder, root) for folder in bundled_checkpoints()}
    results = run_loaders("remote", [(str(f), f / "sample_scores.json") for f in folders.values()], root / "hf",
                          HF_HUB_OFFLINE="1")  # fmt: skip
    return {name: result["remote"] for name, result in zip(folders, results, strict=True)}


def _samples(folder):
    return json.loads((folder / "sample_scores.json").read_text())


def _check_card(folder, metrics):
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "other"
    assert set(DEFAULT_TAGS) <= set(data["tags"])
    if data.get("license") == "other" and data.get("datasets"):
        assert data["license_link"].startswith("https://"), "the weights' terms are linked"
    assert card.text.index("\n## How to use\n") < card.text.index("\n## Results\n"), "the usage snippet comes first"
    assert "revision=REVISION" in card.text
    results = {(r.dataset_config, r.metric_type): r for r in card.data.eval_results}
    expected = reported_test_metrics(metrics)
    assert {protocol for protocol, _ in results} == set(expected), "one model-index entry per protocol"
    for protocol, values in expected.items():
        for key, value in values.items():
            if key.startswith("recall@"):
                continue  # = hit@K, listed once
            result = results[(protocol, key.replace("@", "_at_"))]
            assert result.metric_value == pytest.approx(value, abs=1e-6)
            assert result.dataset_split == "test" and result.task_type == "sequential-recommendation"
    for heading in ("Results", "How to use", "Intended use", "Evaluation protocol", "Training procedure",
                    "Hardware and software", "Limitations", "Data terms", "Citation"):  # fmt: skip
        assert f"\n## {heading}\n" in card.text, heading
    assert "2512.13368" in card.text
    return card



# --------------------------------------------------------------------------------------------------
# the exported folder


def test_export_writes_exactly_a_hub_repo(exported, tiny_run):
    root, model, _ = tiny_run
    names = set(check_folder_contents(exported))
    assert EXPECTED_FILES <= names
    assert all(name in EXPECTED_FILES or name.endswith(".py") for name in names), names
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_blossomrec.BlossomRecModel"
    assert "attn_implementation" not in config and "_attn_implementation" not in config
    samples = _samples(exported)
    assert samples["k"] == 10 and len(samples["samples"]) == 3
    assert all(len(s["items"]) == 10 for s in samples["samples"])
    # nothing about the data or the machine: no user id, no interaction line, no local path
    for path in exported.iterdir():
        if path.suffix in (".json", ".md"):
            text = path.read_text()
            assert USER_PREFIX not in text, f"a user id leaked into {path.name}"
            assert str(root) not in text and "/tmp/" not in text, f"a local path leaked into {path.name}"
    assert "model.safetensors" in names and not list(exported.glob("*.bin"))


def test_paths_are_redacted_without_assuming_where_the_data_lives(monkeypatch):
    from blossom_hf.hub import default_redaction_roots, redact_paths

    monkeypatch.delenv("BLOSSOM_DATA_DIR", raising=False)
    record = {"data": {"source": {"preset": "ml-1m", "path": "/srv/corpora/ml-1m/ratings.dat"}, "data_spec": {}},
              "command": ["train", "--data-dir", "/srv/corpora", "--output-dir", "/scratch/me/runs/r1"]}  # fmt: skip
    redacted = redact_paths(record, default_redaction_roots(record))
    assert redacted["data"]["source"]["path"] == "<data>/ml-1m/ratings.dat"
    assert redacted["command"][2:] == ["<data>", "--output-dir", "<local>/r1"]
    assert "shared" not in json.dumps(default_redaction_roots()), "no default path of this repo's surroundings"


def test_card_metadata_parses_and_matches_metrics(exported):
    metrics = json.loads((exported / "metrics.json").read_text())
    card = _check_card(exported, metrics)
    assert card.data.to_dict()["model-index"][0]["name"] == "blossomrec-tiny"
    assert f'AutoModel.from_pretrained("{REPO_ID}", revision=REVISION, trust_remote_code=True)' in card.text
    assert "custom interaction log" in card.text and card.data.datasets is None


@pytest.mark.parametrize("key", sorted(KNOWN_DATASETS))
def test_card_credits_the_dataset(exported, key):
    metrics = json.loads((exported / "metrics.json").read_text())
    metrics["data"]["data_spec"]["path"] = key
    card = build_model_card(metrics, CardOptions(model_name=f"blossomrec-{key}"))
    assert card.data.datasets == [KNOWN_DATASETS[key].dataset_id]
    assert all(r.dataset_type == KNOWN_DATASETS[key].dataset_id for r in card.data.eval_results)
    if key.startswith("ml-"):
        assert "Harper" in card.text and "do not endorse" in card.text and "Research use only" in card.text
    else:
        assert "He & McAuley (WWW 2016)" in card.text and "SIGIR 2015" in card.text
    if KNOWN_DATASETS[key].published:
        assert KNOWN_DATASETS[key].published in card.text
    ModelCard(str(card))  # round-trips through the parser


def test_library_route_reproduces_sample_scores(exported):
    model = AutoModel.from_pretrained(exported)
    assert type(model).__module__.startswith("blossom_hf.")
    assert check_sample_scores(model, _samples(exported)) == []


@REMOTE_LOADS
def test_remote_code_route_reproduces_sample_scores(exported, remote_loads):
    result = remote_loads["export"]
    assert result["module"].startswith("transformers_modules") and not result["blossom_hf_imported"]
    assert compare_sample_scores(_samples(exported), result["items"], result["scores"]) == []


def test_sample_score_check_catches_a_different_model(exported, tiny_run):
    model = AutoModel.from_pretrained(exported)
    with __import__("torch").no_grad():
        model.item_embeddings.weight[1:] = model.item_embeddings.weight[1:].flip(0)
    assert check_sample_scores(model, _samples(exported)), "a changed model must not pass"


# --------------------------------------------------------------------------------------------------
# errors


def test_export_refuses_bad_input(tiny_run, exported, tmp_path):
    root, model, record = tiny_run
    with pytest.raises(HubExportError, match="no 'test' results"):
        export_hub_folder(model, tmp_path / "a", {"valid": {}})
    with pytest.raises(HubExportError, match="is not empty; pass overwrite=True"):
        export_hub_folder(model, exported, record)
    before = sorted(p.name for p in exported.iterdir())
    with pytest.raises(KeyError, match="unknown item id 'no-such-item'"):
        export_hub_folder(model, exported, record, overwrite=True, sample_histories=[["no-such-item"]])
    assert sorted(p.name for p in exported.iterdir()) == before, "a failed export leaves the old one intact"
    assert not list(exported.parent.glob(".*staging-*")), "a failed export removes its own staging folder"
    stray = tmp_path / "b"
    stray.mkdir()
    (stray / "ratings.dat").write_text("1::1::5::0\n")
    with pytest.raises(HubExportError, match="refusing to overwrite"):
        export_hub_folder(model, stray, record, overwrite=True)
    vocabulary, model.vocabulary = model.vocabulary, None
    try:
        with pytest.raises(HubExportError, match="model.vocabulary is not set"):
            export_hub_folder(model, tmp_path / "c", record)
    finally:
        model.vocabulary = vocabulary
    copy = tmp_path / "d"
    shutil.copytree(exported, copy)
    (copy / "train.csv").write_text("user,item\n")
    with pytest.raises(HubExportError, match="unexpected entries"):
        check_folder_contents(copy)


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_damaged_weights_give_a_clear_error(exported, tmp_path, damage):
    folder = tmp_path / "repo"
    shutil.copytree(exported, folder)
    weights = folder / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else blob[:8] + b"\xff" * 64 + blob[72:])
    with pytest.raises(OSError, match=r"Cannot read the weights in .*model\.safetensors: the file is damaged or "
                                      r"incomplete .*download it again"):  # fmt: skip
        AutoModel.from_pretrained(folder)


def test_future_format_and_mismatched_vocabulary_give_clear_errors(exported, tmp_path):
    folder = tmp_path / "repo"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config["blossomrec_format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 99, newer than the 1 this code reads. Upgrade"):
        AutoModel.from_pretrained(folder)
    config["blossomrec_format_version"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    vocabulary = json.loads((folder / "item_vocabulary.json").read_text())
    vocabulary["items"] = vocabulary["items"][:-1]
    (folder / "item_vocabulary.json").write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError, match="item_vocabulary.json has .* items but the model's vocab_size is"):
        AutoModel.from_pretrained(folder)


@pytest.mark.slow
def test_export_command(tiny_run, tmp_path, monkeypatch):
    """`blossom-hf export RUN_DIR TARGET`: the evaluation-record merge, refusals, --onnx without the serving module."""
    import importlib.util

    from blossom_hf.commands import export as export_command
    from blossom_hf.errors import BlossomUserError

    root, _, record = tiny_run
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"test": record["test"], "device": "cpu", "precision": "fp32",
                                      "command": "blossom-hf evaluate --model best_model"}))  # fmt: skip
    target = tmp_path / "exports" / "blossomrec-tiny"
    argv = [str(root / "run"), str(target), "--repo-id", REPO_ID, "--evaluation", str(evaluation)]
    assert export_command.main(argv) == 0
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["evaluation"]["splits"] == ["test"] and "valid metrics are those recorded during training" in \
        metrics["evaluation"]["note"]  # fmt: skip
    assert "re-computed from this checkpoint" in (target / "README.md").read_text()
    check_folder_contents(target)
    with pytest.raises(HubExportError, match="is not empty; pass overwrite=True"):
        export_command.main(argv)
    assert export_command.main([*argv, "--overwrite"]) == 0
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*best_model"):
        export_command.main([str(tmp_path), str(tmp_path / "x")])
    empty = tmp_path / "empty.json"
    empty.write_text('{"device": "cpu"}')
    with pytest.raises(HubExportError, match="empty.json holds no valid/test results"):
        export_command.main([str(root / "run"), str(tmp_path / "x"), "--evaluation", str(empty)])
    if importlib.util.find_spec("blossom_hf.serving") is None:
        with pytest.raises(BlossomUserError, match="ONNX export is unavailable"):
            export_command.main([str(root / "run"), str(tmp_path / "y"), "--onnx", str(tmp_path / "m.onnx")])
        assert not (tmp_path / "y").exists(), "refused before any work"
    else:
        # the command's wiring only: the real export (onnxruntime top-10 against PyTorch) is
        # tests/test_export.py::test_onnx_export_of_the_bundled_checkpoint_runs_in_onnxruntime
        from blossom_hf import serving

        calls = []

        def fake_export(model, path, overwrite=False):
            calls.append((type(model).__name__, Path(path), overwrite))
            Path(path).write_bytes(b"onnx")
            return Path(path)

        monkeypatch.setattr(serving, "export_onnx", fake_export)
        onnx_file = tmp_path / "onnx" / "m.onnx"
        assert export_command.main([str(root / "run"), str(tmp_path / "y"), "--onnx", str(onnx_file)]) == 0
        assert calls == [("BlossomRecModel", onnx_file, False)] and (tmp_path / "y" / "config.json").is_file()
        with pytest.raises(FileExistsError, match="overwrite"):
            export_command.main([str(root / "run"), str(tmp_path / "z"), "--onnx", str(onnx_file)])
        assert not (tmp_path / "z").exists(), "refused before any work"


# --------------------------------------------------------------------------------------------------
# push and serve


def test_push_dry_run_lists_files_and_sizes(exported, capsys, tmp_path):
    argv = [str(exported), "--repo-id", REPO_ID, "--dry-run", "--private", "--revision", "dev",
            "--endpoint", "http://127.0.0.1:9"]  # fmt: skip
    assert push_command.main(argv) == 0
    out = capsys.readouterr().out
    assert f"Would upload {len(list(exported.iterdir()))} files" in out
    assert f"to {REPO_ID}@dev (private) on http://127.0.0.1:9" in out and "Dry run: nothing uploaded." in out
    for path in exported.iterdir():
        assert path.name in out
    assert "model.safetensors" in out and "KB" in out and "reproduces its sample scores" in out
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(HubExportError, match=r"missing \['model.safetensors'\]"):
        push_command.main([str(broken), "--repo-id", REPO_ID, "--dry-run"])


@pytest.mark.parametrize("repo_id", ["org/blossom rec", "a/b/c", "--org/x", "org/x..y", "blossomrec"])
def test_push_refuses_a_bad_repo_id(exported, repo_id):
    with pytest.raises(HubExportError, match=f"invalid Hub repo id {repo_id!r}"):
        push_command.main([str(exported), f"--repo-id={repo_id}", "--dry-run"])


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "other-weights", "vocabulary"])
def test_push_dry_run_refuses_damaged_weights(exported, tmp_path, damage, tiny_run):
    folder = tmp_path / "repo"
    shutil.copytree(exported, folder)
    if damage == "vocabulary":  # today's clear error, now also before an upload
        vocabulary = json.loads((folder / "item_vocabulary.json").read_text())
        vocabulary["items"] = vocabulary["items"][:-1]
        (folder / "item_vocabulary.json").write_text(json.dumps(vocabulary))
        with pytest.raises(HubExportError, match="item_vocabulary.json has .* items but the model's vocab_size is"):
            push_command.main([str(folder), "--repo-id", REPO_ID, "--dry-run"])
        return
    weights = folder / "model.safetensors"
    blob = weights.read_bytes()
    if damage == "other-weights":  # a well-formed file of another model: the sample scores catch it
        import torch

        _, model, _ = tiny_run
        other = type(model)(model.config)
        torch.manual_seed(1)
        other.vocabulary = model.vocabulary
        other.save_pretrained(tmp_path / "other")
        shutil.copyfile(tmp_path / "other" / "model.safetensors", weights)
        with pytest.raises(HubExportError, match="do not reproduce sample_scores.json"):
            push_command.main([str(folder), "--repo-id", REPO_ID, "--dry-run"])
        return
    weights.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else blob[:8] + b"\xff" * 64 + blob[72:])
    from blossom_hf.errors import BlossomUserError

    with pytest.raises(BlossomUserError, match=rf"Cannot read the weights in {folder}/model\.safetensors: the file is"):
        push_command.main([str(folder), "--repo-id", REPO_ID, "--dry-run"])


def test_push_uploads_the_package_code_and_our_card(exported, tmp_path, monkeypatch, capsys):
    """`blossom-hf push` of an artefacts-only folder, and model.push_to_hub: what reaches upload_folder."""
    from huggingface_hub import HfApi

    uploads = []

    def fake_upload(self, *, folder_path, **kwargs):
        uploads.append({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
        return "https://hub.invalid/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: type("R", (), {"repo_id": repo_id})())
    monkeypatch.setattr(HfApi, "create_branch", lambda self, *a, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload)
    monkeypatch.setattr(HfApi, "file_exists", lambda self, *a, **kw: False)
    artefacts = tmp_path / "artefacts"
    shutil.copytree(exported, artefacts, ignore=shutil.ignore_patterns("*.py"))
    assert push_command.main([str(artefacts), "--repo-id", REPO_ID]) == 0
    assert set(uploads[-1]) == EXPECTED_FILES, "the package's model code is added to an artefacts-only folder"
    assert uploads[-1]["README.md"] == (exported / "README.md").read_bytes(), "the export's card, unchanged"

    model = AutoModel.from_pretrained(exported)
    assert model.push_to_hub(REPO_ID, tags=["mine"]) == "https://hub.invalid/commit/0"
    files = uploads[-1]
    assert PACKAGE_CODE <= set(files) and {"config.json", "model.safetensors", "item_vocabulary.json"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert "mine" in card.data.tags and "blossomrec" in card.data.tags, "our card, not transformers' template"
    assert f'from_pretrained("{REPO_ID}", revision=REVISION' in card.text
    monkeypatch.setattr(HfApi, "file_exists", lambda self, *a, **kw: True)
    model.push_to_hub(REPO_ID)
    assert "README.md" not in uploads[-1], "a repo's existing card is kept"
    monkeypatch.setattr(HfApi, "file_exists", lambda self, *a, **kw: False)
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id=REPO_ID)  # transformers' other route
    assert PACKAGE_CODE <= set(uploads[-1]) and b"# BlossomRec checkpoint" in uploads[-1]["README.md"]
    assert (tmp_path / "local" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(olah_missing_reason() is not None, reason=str(olah_missing_reason()))
def test_resolves_through_a_hub_server_then_offline_from_the_cache(exported, tmp_path):
    hub = LocalHub(tmp_path / "hub")
    commit = hub.add_repo(REPO_ID, exported)
    hf_home = tmp_path / "hf_home"
    expected = _samples(exported)
    hub.start()
    try:
        loaded = run_loader("remote,library", REPO_ID, exported / "sample_scores.json", hf_home,
                            HF_ENDPOINT=hub.endpoint)  # fmt: skip
    finally:
        hub.stop()
    online, library = loaded["remote"], loaded["library"]
    assert online["module"].startswith("transformers_modules") and not online["blossom_hf_imported"]
    assert library["module"].startswith("blossom_hf.")
    snapshot = hf_home / "hub" / "models--org--blossomrec-tiny" / "snapshots" / commit
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "item_vocabulary.json").is_file()
    offline = run_loader("remote", REPO_ID, exported / "sample_scores.json", hf_home, HF_ENDPOINT=hub.endpoint,
                         HF_HUB_OFFLINE="1")["remote"]  # fmt: skip
    for result in (online, library, offline):
        assert compare_sample_scores(expected, result["items"], result["scores"]) == []


# --------------------------------------------------------------------------------------------------
# bundled checkpoints (model_cards/*/ and the package's ML-1M one): artefacts in git, code added at push time

BUNDLED = bundled_checkpoints()


def test_the_bundled_folders_exist_with_one_repo_id_each():
    assert {p.name for p in BUNDLED} == set(BUNDLED_REPO_IDS)
    for folder in BUNDLED:
        assert f'"{BUNDLED_REPO_IDS[folder.name]}"' in (folder / "README.md").read_text()


@REMOTE_LOADS
@pytest.mark.parametrize("folder", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_checkpoint(folder, tmp_path, remote_loads):
    names = check_folder_contents(folder, require_code=False)
    tracked = subprocess.run(["git", "ls-files", "--", "."], cwd=folder, capture_output=True, text=True)
    if tracked.returncode == 0:
        assert not [n for n in tracked.stdout.split() if n.endswith(".py")], "bundled folders hold artefacts only"
    assert set(HUB_DATA_FILES) <= set(names)
    metrics = json.loads((folder / "metrics.json").read_text())
    _check_card(folder, metrics)
    samples = _samples(folder)
    assert check_sample_scores(AutoModel.from_pretrained(folder), samples) == []
    repo = hub_folder(folder, tmp_path)
    assert {p.name for p in repo.glob("*.py")} == PACKAGE_CODE
    check_folder_contents(repo)
    result = remote_loads[folder.name]  # this folder as hub_folder makes it, loaded with trust_remote_code
    assert result["module"].startswith("transformers_modules") and not result["blossom_hf_imported"]
    assert compare_sample_scores(samples, result["items"], result["scores"]) == []


def test_the_model_cards_folder_links_to_the_packaged_ml1m_checkpoint():
    link = REPO / "model_cards" / "blossomrec-ml1m"
    assert link.resolve() == (REPO / "blossom_hf" / "checkpoints" / "blossomrec-ml1m").resolve()
