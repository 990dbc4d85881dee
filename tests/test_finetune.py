"""Fine-tuning: vocabulary remapping (shared embeddings kept, encoder intact, new rows N(0, std), old items
dropped or kept), mapping files, title matching, and `blossom-hf finetune` end to end on generated data."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA, tiny_config
from hub_testing import write_interactions
from huggingface_hub import ModelCard
from transformers import AutoModel

from blossom_hf import BlossomRecModel, ItemVocabulary
from blossom_hf.catalogs import (
    CatalogError,
    build_title_mapping,
    match_titles,
    normalize_title,
    read_item_titles,
)
from blossom_hf.cli import main as blossom_hf_main
from blossom_hf.commands import finetune as finetune_command
from blossom_hf.errors import BlossomUserError
from blossom_hf.finetuning import (
    VocabularyMappingError,
    read_item_mapping,
    remap_item_vocabulary,
    title_mapping_for,
    write_item_mapping,
)
from blossom_hf.hub import check_folder_contents, check_sample_scores


@pytest.fixture
def pretrained():
    torch.manual_seed(0)
    model = BlossomRecModel(tiny_config(vocab_size=11)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.vocabulary = ItemVocabulary(list(range(101, 111)))
    return model


def _row(model, raw):
    return model.item_embeddings.weight[model.vocabulary.index(raw)]


def _assert_encoder_kept(old, new):
    old_state, new_state = old.state_dict(), new.state_dict()
    assert old_state.keys() == new_state.keys()
    for key, value in old_state.items():
        if key != "item_embeddings.weight":
            assert torch.equal(value, new_state[key]), key



# --------------------------------------------------------------------------------------------------
# remapping


def test_shared_items_keep_embeddings_new_ones_are_fresh(pretrained):
    new_vocab = ItemVocabulary([105, 106, 200, 201, 202])
    model, report = remap_item_vocabulary(pretrained, new_vocab, init_std=0.5, seed=3)
    assert model.vocabulary == new_vocab and model.config.vocab_size == 6
    assert pretrained.config.vocab_size == 11 and pretrained.vocabulary == ItemVocabulary(list(range(101, 111)))
    _assert_encoder_kept(pretrained, model)
    for raw in (105, 106):
        assert torch.equal(_row(model, raw), _row(pretrained, raw))
    fresh = torch.stack([_row(model, raw) for raw in (200, 201, 202)])
    assert 0.3 < float(fresh.detach().std()) < 0.7, "new rows are N(0, init_std)"
    assert torch.equal(model.item_embeddings.weight[0], pretrained.item_embeddings.weight[0])
    assert (report.shared, report.initialised, report.old_kept, report.old_dropped) == (2, 3, 0, 8)
    again, _ = remap_item_vocabulary(pretrained, new_vocab, init_std=0.5, seed=3)
    assert torch.equal(again.item_embeddings.weight, model.item_embeddings.weight), "seeded"
    # the carried-over model scores a shared history like the pretrained one (same encoder, same rows)
    ids_old = torch.tensor([[pretrained.vocabulary.index(105), pretrained.vocabulary.index(106)]])
    ids_new = torch.tensor([[1, 2]])
    hidden_old = pretrained(ids_old).last_hidden_state
    torch.testing.assert_close(model.eval()(ids_new).last_hidden_state, hidden_old)


def test_keep_old_items_appends_them_with_their_embeddings(pretrained):
    model, report = remap_item_vocabulary(pretrained, ItemVocabulary([105, 200]), keep_old=True)
    assert model.vocabulary.raw_ids == [105, 200, 101, 102, 103, 104, 106, 107, 108, 109, 110]
    assert report.appended_ids == [101, 102, 103, 104, 106, 107, 108, 109, 110]
    for raw in pretrained.vocabulary.raw_ids:
        assert torch.equal(_row(model, raw), _row(pretrained, raw))
    assert (report.shared, report.old_kept, report.old_dropped, report.final_items) == (1, 9, 0, 11)


def test_mapping_between_catalogues(pretrained):
    new_vocab = ItemVocabulary(["a", "b", "c", "d"])
    pairs = [(101, "a"), (102, "b"), (102, "c"), (103, "zz"), (999, "d")]
    model, report = remap_item_vocabulary(pretrained, new_vocab, pairs, keep_old=True)
    assert torch.equal(_row(model, "a"), _row(pretrained, 101))
    assert torch.equal(_row(model, "b"), _row(pretrained, 102)) and torch.equal(_row(model, "c"), _row(pretrained, 102))
    assert report.mapping == "file" and report.mapping_pairs == 5
    assert (report.mapping_unused_old, report.mapping_unused_new) == (1, 1)
    # kept old items: 103 mapped to an id absent from the data keeps that name; unmapped ones get the prefix
    assert model.vocabulary.raw_ids[4:] == ["zz"] + [f"pretrained:{i}" for i in range(104, 111)]
    assert torch.equal(_row(model, "zz"), _row(pretrained, 103))
    assert report.shared == 3 and report.initialised == 1
    dropped, report = remap_item_vocabulary(pretrained, new_vocab, {101: "a"})
    assert dropped.vocabulary == new_vocab and report.old_dropped == 9
    with pytest.raises(VocabularyMappingError, match="new item 'a' is mapped from two pretrained items"):
        remap_item_vocabulary(pretrained, new_vocab, [(101, "a"), (102, "a")])
    pretrained.vocabulary = None
    with pytest.raises(VocabularyMappingError, match="has no item vocabulary"):
        remap_item_vocabulary(pretrained, new_vocab)


def test_mapping_files(tmp_path):
    path = write_item_mapping([(1, "x"), ("2", "y")], tmp_path / "map.tsv")
    assert path.read_text().splitlines()[0] == "old_id\tnew_id"
    assert read_item_mapping(path) == [("1", "x"), ("2", "y")]
    csv_path = tmp_path / "map.csv"
    csv_path.write_text("# ML-1M -> ML-100K\n10,20\n\n11,21,extra\n")
    assert read_item_mapping(csv_path) == [("10", "20"), ("11", "21")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("old_id\tnew_id\n10\n")
    with pytest.raises(VocabularyMappingError, match=r"bad.tsv, line 2: expected two tab-separated columns"):
        read_item_mapping(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_item_mapping(tmp_path / "missing.tsv")


def test_header_only_and_reversed_mappings_are_refused(pretrained, tmp_path):
    header_only = tmp_path / "map.tsv"
    header_only.write_text("old_id\tnew_id\n")
    with pytest.raises(VocabularyMappingError, match="map.tsv has a header but no .* pairs"):
        read_item_mapping(header_only)
    new_vocab = ItemVocabulary(["a", "b", "c", "d"])
    with pytest.raises(VocabularyMappingError, match="looks reversed: 0% of its pairs fit .* but 100% fit the other"):
        remap_item_vocabulary(pretrained, new_vocab, [("a", 101), ("b", 102), ("c", 103)])
    with pytest.raises(VocabularyMappingError, match="no pair of the item mapping \\(1 pairs\\) links"):
        remap_item_vocabulary(pretrained, new_vocab, [(1, "x")])


def test_swapped_and_header_only_catalogues_are_refused(pretrained, tmp_path):
    """--map-titles OLD NEW given as NEW OLD: both catalogues number films with small integers, so only which
    catalogue lists which vocabulary's items tells them apart."""
    old = tmp_path / "movies.dat"  # the pretrained model's catalogue: ids 101..115 (covers its vocabulary)
    old.write_text("".join(f"{k}::Film {k} (1990)::Drama\n" for k in range(101, 116)), encoding="latin-1")
    new = tmp_path / "u.item"  # the new data's: ids 1..6 for films 101..106, plus 107..110 under their own ids
    lines = [f"{k - 100}|Film {k} (1990)|01-Jan-1990\n" for k in range(101, 107)]
    lines += [f"{k}|Other {k} (1990)|01-Jan-1990\n" for k in range(107, 111)]
    new.write_text("".join(lines), encoding="latin-1")
    new_vocab = ItemVocabulary(list(range(1, 7)))
    match = title_mapping_for(old, new, pretrained.vocabulary, new_vocab)
    assert sorted(match.pairs) == sorted((str(k), str(k - 100)) for k in range(101, 107))
    with pytest.raises(VocabularyMappingError, match="catalogues look swapped: .*u.item lists 40% of the pretrained"):
        title_mapping_for(new, old, pretrained.vocabulary, new_vocab)
    header_only = tmp_path / "titles.csv"
    header_only.write_text("item_id,title\n")
    with pytest.raises(CatalogError, match="titles.csv holds no items \\(only a header\\)"):
        title_mapping_for(old, header_only, pretrained.vocabulary, new_vocab)


# --------------------------------------------------------------------------------------------------
# titles


@pytest.mark.parametrize(
    "title,expected",
    [
        ("Quiet Harbour, The (1994)", ("the quiet harbour", "1994")),
        ("The Quiet Harbour (1994)", ("the quiet harbour", "1994")),
        ("Ville Rouge, La (Red Town, The) (1995)", ("la ville rouge", "1995")),
        ("Cafe Zenith & Friends (2001) (V)", ("cafe zenith and friends", "2001")),
        ("Café  Zénith and Friends (2001)", ("cafe zenith and friends", "2001")),
        ("untitled", ("untitled", None)),
    ],
)
def test_normalize_title(title, expected):
    assert normalize_title(title) == expected


def test_match_titles_stages_and_ambiguity():
    old = {"1": "Quiet Harbour, The (1994)", "2": "Red Town, The (Ville Rouge, La) (1995)",
           "3": "Saga: Part II - The Long Return (1980)", "4": "Twin Title (1990)", "5": "Twin Title (1990)",
           "6": "Late Bloom (1997)", "7": "Number Nine (1992)"}  # fmt: skip
    new = {"a": "The Quiet Harbour (1994)", "b": "Ville Rouge, La (1995)", "c": "Long Return, The (1980)",
           "d": "Twin Title (1990)", "e": "Late Bloom (1996)", "f": "unknown", "g": "Nothing Alike (2000)",
           "h": "Quiet Harbour, The (1994)"}  # fmt: skip
    match = match_titles(old, new)
    assert sorted(match.pairs) == [("1", "a"), ("1", "h"), ("2", "b"), ("3", "c"), ("6", "e")]
    assert match.stages == {"exact": 2, "alternative_title": 1, "year_off_by_one": 1, "title_segment": 1}
    assert match.ambiguous_new == ["d"] and match.unmatched_new == ["f", "g"]
    assert match.match_rate == pytest.approx(5 / 8) and match.old_coverage == pytest.approx(4 / 7)


def test_read_item_titles_formats(tmp_path):
    dat = tmp_path / "movies.dat"
    dat.write_bytes("1::Caf\xe9 Zenith (2001)::Comedy\n2::Other (1999)::Drama\n".encode("latin-1"))
    item = tmp_path / "u.item"
    item.write_bytes("7|Caf\xe9 Zenith (2001)|01-Jan-2001||http://x|0|1\n".encode("latin-1"))
    assert read_item_titles(dat) == {"1": "Café Zenith (2001)", "2": "Other (1999)"}
    assert read_item_titles(item) == {"7": "Café Zenith (2001)"}
    assert build_title_mapping(dat, item).pairs == [("1", "7")]
    csv_path = tmp_path / "catalog.csv"
    csv_path.write_text("item_id,title\nA1,Other (1999)\n")
    assert read_item_titles(csv_path) == {"A1": "Other (1999)"}
    (tmp_path / "broken.dat").write_text("1::no separators here\n3\n")
    with pytest.raises(CatalogError, match=r"broken.dat, line 1: expected at least 3 '::'-separated fields"):
        read_item_titles(tmp_path / "broken.dat")
    (tmp_path / "dupe.dat").write_text("1::A (1990)::x\n1::B (1991)::y\n")
    with pytest.raises(CatalogError, match="line 2: item id '1' appears twice"):
        read_item_titles(tmp_path / "dupe.dat")


@pytest.mark.skipif(not (SHARED_DATA / "ml-1m" / "movies.dat").is_file()
                    or not (SHARED_DATA / "ml-100k" / "u.item").is_file(), reason="MovieLens catalogues not present")
def test_ml100k_to_ml1m_title_match_rate():
    match = build_title_mapping(SHARED_DATA / "ml-1m" / "movies.dat", SHARED_DATA / "ml-100k" / "u.item")
    assert match.n_new == 1682 and match.match_rate > 0.98, match.report()
    assert not match.ambiguous_new


# --------------------------------------------------------------------------------------------------
# blossom-hf finetune end to end


@pytest.fixture
def finetune_setup(tmp_path):
    """A pretrained checkpoint over items 1..120 and a new log over m61..m180 with catalogues that match
    items by title (Film k <-> m{k}), so 60 items are shared."""
    torch.manual_seed(1)
    pretrained = BlossomRecModel(tiny_config(vocab_size=121, max_history_length=16))
    pretrained.vocabulary = ItemVocabulary(list(range(1, 121)))
    pretrained.save_pretrained(tmp_path / "pretrained")
    log = write_interactions(tmp_path / "new_log.csv", n_users=30, items=[f"m{k}" for k in range(61, 181)])
    old_catalog = tmp_path / "old_movies.dat"
    old_catalog.write_text("".join(f"{k}::Film {k} (1990)::Drama\n" for k in range(1, 121)))
    new_catalog = tmp_path / "new_catalog.tsv"
    new_catalog.write_text("item_id\ttitle\n" + "".join(f"m{k}\tFilm {k} (1990)\n" for k in range(61, 181)))
    return tmp_path, pretrained, log, old_catalog, new_catalog


def _finetune_argv(root, log, output, *extra):
    return ["--pretrained", str(root / "pretrained"), "--dataset", str(log), "--format", "csv", "--user-col", "user",
            "--item-col", "item", "--time-col", "ts", "--epochs", "2", "--batch-size", "16", "--eval-batch-size",
            "64", "--cpu", "--no-progress", "--output-dir", str(output), *extra]  # fmt: skip


def test_finetune_script_end_to_end(finetune_setup):
    root, pretrained, log, old_catalog, new_catalog = finetune_setup
    output = root / "ft"
    record = finetune_command.run(_finetune_argv(root, log, output, "--map-titles", str(old_catalog), str(new_catalog),
                                          "--keep-old-items", "--model-name", "blossomrec-ft-test"))  # fmt: skip
    items = {line.split(",")[1] for line in log.read_text().splitlines()[1:]}
    shared = {i for i in items if int(i[1:]) <= 120}
    vocab = record["finetuning"]["vocabulary"]
    assert (vocab["new_items"], vocab["shared"]) == (len(items), len(shared))
    assert (vocab["old_kept"], vocab["final_items"]) == (120 - len(shared), 120 + len(items) - len(shared))
    assert record["finetuning"]["mapping"]["source"] == "titles"
    assert record["finetuning"]["mapping"]["match_rate"] == pytest.approx(0.5), "60 of the 120 catalogue titles"
    assert (output / "item_mapping.tsv").is_file() and (output / "metrics.json").is_file()
    hub = output / "hub"
    check_folder_contents(hub)
    card = ModelCard.load(hub / "README.md")
    assert "\n## Fine-tuning\n" in card.text
    assert f"{len(shared)} ({100 * len(shared) / len(items):.1f}%) shared" in card.text
    assert "fine-tuned" in card.data.tags and card.data.base_model is None, "a local base is no Hub id"
    assert str(root) not in card.text and str(root) not in (hub / "metrics.json").read_text()
    assert {(r.dataset_config, r.metric_type) for r in card.data.eval_results} >= {("full", "ndcg_at_10"),
                                                                                   ("uni100", "ndcg_at_10")}
    model = AutoModel.from_pretrained(hub)
    assert len(model.vocabulary) == vocab["final_items"] and "pretrained:1" in model.vocabulary
    assert all(i in model.vocabulary for i in items)
    assert check_sample_scores(model, json.loads((hub / "sample_scores.json").read_text())) == []
    for name in ("embeddings", "layers.0.self_attn.q_proj.weight"):
        assert any(name in key for key in model.state_dict())


def test_finetune_script_from_scratch_baseline(finetune_setup):
    root, pretrained, log, _, _ = finetune_setup
    output = root / "scratch"
    record = finetune_command.run(_finetune_argv(root, log, output, "--from-scratch", "--no-export"))
    assert record["finetuning"]["from_scratch"] is True
    assert record["model_config"]["hidden_size"] == pretrained.config.hidden_size
    items = {line.split(",")[1] for line in log.read_text().splitlines()[1:]}
    assert record["model_config"]["vocab_size"] == len(items) + 1
    assert not (output / "hub").exists()


def test_finetune_script_clear_errors(finetune_setup, capsys):
    root, _, log, _, _ = finetune_setup
    with pytest.raises(BlossomUserError, match="--dataset is required"):
        finetune_command.run(["--pretrained", str(root / "pretrained"), "--output-dir", str(root / "x")])
    with pytest.raises(FileNotFoundError, match="item mapping file .* does not exist"):
        finetune_command.run(_finetune_argv(root, log, root / "y", "--mapping", str(root / "missing.tsv")))
    # an export folder the export would refuse is refused before any training, as one line
    (root / "taken").mkdir()
    (root / "taken" / "notes.txt").write_text("mine")
    capsys.readouterr()
    status = blossom_hf_main(["finetune", *_finetune_argv(root, log, root / "z", "--export-dir", str(root / "taken"))])
    err = capsys.readouterr().err
    assert status == 2 and "--export-dir" in err and "holds no earlier export" in err and err.count("\n") == 1
    assert not (root / "z" / "checkpoint-1").exists() and not (root / "z" / "metrics.json").exists()


def test_finetune_command_refuses_swapped_catalogues(finetune_setup):
    """`--map-titles NEW OLD` (the wrong way round) stops before any training, naming the catalogues."""
    root, _, log, old_catalog, new_catalog = finetune_setup
    output = root / "ft-swapped"
    with pytest.raises(ValueError) as raised:
        finetune_command.run(_finetune_argv(root, log, output, "--map-titles", str(new_catalog), str(old_catalog)))
    message = str(raised.value)
    assert "\n" not in message and ("catalog" in message.lower() or "map-titles" in message), message
    assert not (output / "metrics.json").exists() and not (output / "hub").exists()
