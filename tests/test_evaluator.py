"""reid.evaluator: self-matches (a query image listed in the gallery), per_query.csv and the printed summary."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import main
from reid import checkpoint, datasets, evaluator, metrics, models
from reid.config import EvalConfig
from reid.errors import UsageError


def write_bytes(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)
    return str(path)


# Self-matches ---------------------------------------------------------------------------------------------------

def test_self_matches_are_the_same_file_or_the_same_bytes(tmp_path):
    query = [(write_bytes(tmp_path / "q" / "a.jpg", b"image a"), 1, 0),
             (write_bytes(tmp_path / "q" / "b.jpg", b"b"), 2, 0)]
    os.symlink(tmp_path / "q" / "a.jpg", tmp_path / "link.jpg")
    gallery = [(write_bytes(tmp_path / "g" / "other.jpg", b"image z"), 1, 1),  # same size, other bytes
               (str(tmp_path / "q" / "a.jpg"), 1, 1),  # the query's own file
               (write_bytes(tmp_path / "g" / "copy.jpg", b"image a"), 1, 1),  # a copy
               (str(tmp_path / "link.jpg"), 1, 1),  # a link to it
               (write_bytes(tmp_path / "g" / "big.jpg", b"a larger image"), 2, 1)]
    query_indices, gallery_indices = evaluator.find_self_matches(query, gallery)
    assert query_indices.dtype == gallery_indices.dtype == np.int64
    assert list(zip(query_indices, gallery_indices)) == [(0, 1), (0, 2), (0, 3)]


def test_only_files_whose_size_is_on_both_sides_are_read(tmp_path, monkeypatch):
    query = [(write_bytes(tmp_path / "q.jpg", b"12345"), 1, 0)]
    gallery = [(write_bytes(tmp_path / "same-size.jpg", b"54321"), 1, 1),
               (write_bytes(tmp_path / "other-size.jpg", b"123456"), 1, 1)]
    read = []
    digest = evaluator._file_digest
    monkeypatch.setattr(evaluator, "_file_digest", lambda path: read.append(os.path.basename(path)) or digest(path))
    evaluator.find_self_matches(query, gallery)
    assert sorted(read) == ["q.jpg", "same-size.jpg"]


def test_a_missing_image_is_named(tmp_path):
    query = [(write_bytes(tmp_path / "q.jpg", b"1"), 1, 0)]
    with pytest.raises(UsageError, match="Cannot read the image .*missing.jpg"):
        evaluator.find_self_matches(query, [(str(tmp_path / "missing.jpg"), 1, 1)])


def test_a_split_whose_only_matches_are_the_queries_themselves_cannot_be_scored(tmp_path):
    query = [(write_bytes(tmp_path / "q.jpg", b"query"), 1, 0)]
    gallery = [(str(tmp_path / "q.jpg"), 1, 1), (write_bytes(tmp_path / "g.jpg", b"other id"), 2, 1)]
    with pytest.raises(UsageError, match="the query image itself"):
        evaluator.check_scorable(query, gallery, "test split")
    evaluator.check_scorable(query, gallery + [(write_bytes(tmp_path / "g2.jpg", b"same id"), 1, 1)], "test split")


def write_list_dataset(root, source_images, with_duplicates):
    """A ``-d custom`` list-file dataset without cameras: one query, two gallery images of its id and three of
    others; ``with_duplicates``, the query is also listed in the gallery, and so is a byte copy of it."""
    def image(name, source):
        shutil.copyfile(source, os.path.join(root, "images", name))
        return f"images/{name}"

    os.makedirs(os.path.join(root, "images"))
    sources = iter(source_images)
    train = [f"{image(f't{index}.jpg', next(sources))} {index % 2}" for index in range(4)]
    query = [f"{image('q.jpg', next(sources))} 0"]
    gallery = [f"{image(f'g{pid}_{index}.jpg', next(sources))} {pid}" for pid in range(3) for index in range(2)]
    gallery.append(f"{image('distractor.jpg', next(sources))} 7")
    if with_duplicates:
        shutil.copyfile(os.path.join(root, "images", "q.jpg"), os.path.join(root, "images", "copy_of_q.jpg"))
        gallery[1:1] = ["images/q.jpg 0"]
        gallery.append("images/copy_of_q.jpg 0")
    for split, lines in (("train", train), ("query", query), ("gallery", gallery)):
        with open(os.path.join(root, f"{split}.txt"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return datasets.create("custom", root, verbose=False)


@pytest.mark.slow
def test_a_query_listed_in_a_custom_gallery_scores_as_if_it_were_not(tiny_synthetic, tmp_path):
    folder = os.path.join(tiny_synthetic, "bounding_box_test")
    sources = [os.path.join(folder, name) for name in sorted(os.listdir(folder))[::3][:12]]
    with_duplicates = write_list_dataset(tmp_path / "with", sources, with_duplicates=True)
    without = write_list_dataset(tmp_path / "without", sources, with_duplicates=False)
    assert len(with_duplicates.gallery) == len(without.gallery) + 2
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.create("resnet18", 2, num_features=32)
    config = EvalConfig(batch_size=8, workers=0, height=96, width=32)
    device = torch.device("cpu")
    results = evaluator.evaluate(model, with_duplicates.query, with_duplicates.gallery, config, device,
                                 show_progress=False)
    expected = evaluator.evaluate(model, without.query, without.gallery, config, device, show_progress=False)
    assert results["num_self_matches"] == 2 and expected["num_self_matches"] == 0
    for key in ("rank1", "rank5", "mAP", "mINP", "num_valid_queries"):
        assert results[key] == pytest.approx(expected[key], abs=1e-6), key
    for view in ("allshots", "market1501"):
        assert results["cmc_views"][view] == pytest.approx(expected["cmc_views"][view], abs=1e-6), view
    for key, values in expected["per_query"].items():
        np.testing.assert_allclose(results["per_query"][key], values, atol=1e-6)
    assert "Left out: 2 gallery entries that are the query image itself" in evaluator.format_table(results)
    assert "Left out" not in evaluator.format_table(expected)
    features = [evaluator.extract_features(model, items, config, device, show_progress=False)
                for items in (with_duplicates.query, with_duplicates.gallery)]
    (q_pids, q_camids), (g_pids, g_camids) = (evaluator.labels(items) for items in (with_duplicates.query,
                                                                                  with_duplicates.gallery))
    counted = metrics.retrieval_metrics(*features, q_pids, g_pids, q_camids, g_camids)
    assert counted["rank1"] == 1.0 and counted["mAP"] > results["mAP"], "the duplicates, counted, would rank first"


# per_query.csv ---------------------------------------------------------------------------------------------------

def per_query_example(tmp_path):
    root = tmp_path / "data"
    query_items = [(str(root / "query" / "0001_c1.jpg"), 1, 0), (str(root / "query" / "odd, name.jpg"), 2, 1),
                   (str(tmp_path / "elsewhere" / "x.jpg"), 3, 2)]
    per_query = {"query_index": np.array([0, 1, 2]), "ap": np.array([1 / 3, 0.1 + 0.2, 1.0]),
                 "first_match_rank": np.array([2, 1, 1]), "inp": np.array([2 / 7, np.nextafter(0.5, 1), 1.0])}
    return query_items, per_query, root


def test_per_query_file_round_trips(tmp_path):
    query_items, per_query, root = per_query_example(tmp_path)
    path = tmp_path / "per_query.csv"
    evaluator.write_per_query(str(path), query_items, {key: values[[0, 2]] for key, values in per_query.items()},
                              str(root))
    lines = path.read_text().splitlines()
    assert lines[0] == "query,pid,camid,ap,first_match_rank,inp"
    assert lines[1] == f"{os.path.join('query', '0001_c1.jpg')},1,0,{1 / 3!r},2,{2 / 7!r}"
    assert lines[2].startswith(f"{tmp_path / 'elsewhere' / 'x.jpg'},3,2,")
    evaluator.write_per_query(str(path), query_items, per_query, str(root))
    read = evaluator.read_per_query(str(path))
    assert read["query"].tolist() == [os.path.join("query", "0001_c1.jpg"), os.path.join("query", "odd, name.jpg"),
                                      str(tmp_path / "elsewhere" / "x.jpg")]
    np.testing.assert_array_equal(read["pid"], [1, 2, 3])
    np.testing.assert_array_equal(read["camid"], [0, 1, 2])
    for key in ("ap", "first_match_rank", "inp"):
        assert read[key].dtype == per_query[key].dtype
        np.testing.assert_array_equal(read[key], per_query[key])
    assert not os.path.exists(f"{path}.tmp")


@pytest.mark.parametrize("content, expected", [
    ("", "line 1: expected the per-query header"),
    ("query,pid,camid,ap,rank,inp\n", "line 1: expected the per-query header"),
    ("query,pid,camid,ap,first_match_rank,inp\na.jpg,1,0,0.5,1,0.5\nb.jpg,1,0,0.5,1\n", r"line 3: .*5 fields"),
    ("query,pid,camid,ap,first_match_rank,inp\na.jpg,one,0,0.5,1,0.5\n", "line 2: .*whole numbers"),
    ("query,pid,camid,ap,first_match_rank,inp\na.jpg,1,0,0.5,0,0.5\n", "line 2: .*at least 1"),
    ("query,pid,camid,ap,first_match_rank,inp\na.jpg,1,0,1.5,1,0.5\n", "line 2: .*between 0 and 1"),
    ("query,pid,camid,ap,first_match_rank,inp\na.jpg,1,0,nan,1,0.5\n", "line 2: .*between 0 and 1"),
])
def test_a_malformed_per_query_file_is_named_with_its_line(tmp_path, content, expected):
    path = tmp_path / "per_query.csv"
    path.write_text(content)
    with pytest.raises(UsageError, match=expected) as error:
        evaluator.read_per_query(str(path))
    assert str(path) in str(error.value)


def test_a_missing_per_query_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="Cannot read the per-query file .*per_query.csv"):
        evaluator.read_per_query(str(tmp_path / "per_query.csv"))


def test_half_written_per_query_files_are_stale_temporaries(tmp_path):
    for name in ("per_query.csv.tmp", "per_query-market.csv.tmp", "per_query.csv"):
        (tmp_path / name).write_text("")
    removed = checkpoint.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(path) for path in removed) == ["per_query-market.csv.tmp", "per_query.csv.tmp"]
    assert (tmp_path / "per_query.csv").exists()


# Through main.py --------------------------------------------------------------------------------------------------

def assert_per_query_file_agrees(path, section):
    """The per-query file at ``path`` and the results.json ``section`` it belongs to."""
    per_query = evaluator.read_per_query(str(path))
    assert len(per_query["ap"]) == section["num_valid_queries"]
    assert per_query["ap"].mean() == pytest.approx(section["mAP"], rel=1e-12, abs=0)
    assert per_query["inp"].mean() == pytest.approx(section["mINP"], rel=1e-12, abs=0)
    assert np.mean(per_query["first_match_rank"] == 1) == pytest.approx(section["rank1"], rel=1e-12, abs=0)
    assert all(query.startswith("query" + os.sep) for query in per_query["query"])


@pytest.mark.slow
def test_a_training_run_writes_per_query_csv_once(tiny_args, tiny_synthetic, tmp_path):
    """The last epoch evaluates the test split (--combine-trainval) and the final evaluation reuses it."""
    assert main.main(tiny_args(tiny_synthetic, tmp_path, "--epochs", "2", "--combine-trainval")) == 0
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["per_query"] == "per_query.csv"
    assert [name for name in os.listdir(tmp_path) if name.startswith("per_query")] == ["per_query.csv"]
    assert_per_query_file_agrees(tmp_path / "per_query.csv", record)


@pytest.mark.slow
def test_evaluate_writes_a_per_query_file_for_each_test_dataset(tiny_args, tiny_synthetic, trained, tmp_path,
                                                               capsys):
    other = f"synthetic:{tiny_synthetic}"
    argv = tiny_args(tiny_synthetic, tmp_path, "--evaluate", "--resume", trained, "--test-dataset", other,
                     "--test-dataset", other)
    assert main.main(argv) == 0
    assert "each query's to per_query.csv, per_query-synthetic.csv, per_query-synthetic-2.csv" in \
        capsys.readouterr().out
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["per_query"] == "per_query.csv"
    assert [section["per_query"] for section in record["other_datasets"]] == ["per_query-synthetic.csv",
                                                                              "per_query-synthetic-2.csv"]
    for section in (record, *record["other_datasets"]):
        assert_per_query_file_agrees(tmp_path / section["per_query"], section)
