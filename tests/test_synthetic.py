"""The synthetic dataset: determinism, Market-1501 layout, junk and distractors, ensure() and options."""
import os
from collections import defaultdict

import pytest
from PIL import Image

from reid import datasets
from reid.datasets import synthetic
from reid.errors import UsageError

SMALL = dict(num_train_ids=3, num_test_ids=4, num_cameras=2, images_per_camera=2, height=48, width=24)


def folder_bytes(root):
    contents = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                contents[os.path.relpath(path, root)] = handle.read()
    return contents


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    synthetic.generate(tmp_path / "a", seed=3, **SMALL)
    synthetic.generate(tmp_path / "b", seed=3, **SMALL)
    synthetic.generate(tmp_path / "c", seed=4, **SMALL)
    first, second, other = (folder_bytes(tmp_path / name) for name in "abc")
    assert first == second
    images = [name for name in first if name.endswith(".jpg")]
    assert sum(first[name] != other.get(name) for name in images) > len(images) // 2


def test_loads_as_market_layout(tiny_synthetic):
    dataset = datasets.create("synthetic", tiny_synthetic, combine_trainval=True, verbose=False)
    assert dataset.name == "synthetic" and dataset.num_ignored == 0
    assert dataset.num_train_ids == 8 and len(dataset.train) >= 8 * 3 * 2
    test_ids = set(range(9, 15))
    assert {pid for _, pid, _ in dataset.query} == test_ids
    assert {pid for _, pid, _ in dataset.gallery} == test_ids | {0}, "distractors (id 0) in the gallery"
    assert {camid for _, _, camid in dataset.train + dataset.query + dataset.gallery} == {0, 1, 2}
    with Image.open(dataset.query[0][0]) as image:
        assert image.size == (32, 64) and image.format == "JPEG"


def test_gallery_folder_holds_junk_that_the_loader_drops(tiny_synthetic):
    names = os.listdir(tiny_synthetic / "bounding_box_test")
    assert any(name.startswith("-1_") for name in names)
    dataset = datasets.create("synthetic", tiny_synthetic, verbose=False)
    assert len(dataset.gallery) == len(names) - sum(name.startswith("-1_") for name in names)


def test_every_query_has_a_match_in_another_camera(tiny_synthetic):
    dataset = datasets.create("synthetic", tiny_synthetic, verbose=False)
    gallery_cameras = defaultdict(set)
    for _, pid, camid in dataset.gallery:
        gallery_cameras[pid].add(camid)
    pairs = [(pid, camid) for _, pid, camid in dataset.query]
    assert len(pairs) == len(set(pairs)), "one query image per (id, camera)"
    for pid, camid in pairs:
        assert gallery_cameras[pid] - {camid}


def test_identities_differ_in_their_clothing():
    identities = synthetic.make_identities(range(1, 301), seed=0)
    signatures = {synthetic._signature(identity) for identity in identities.values()}
    assert len(signatures) == 300
    assert len({identity.upper for identity in identities.values()}) < 20, "colours are shared"


def test_ensure_generates_once(tmp_path, capsys):
    root = tmp_path / "synthetic"
    synthetic.ensure(str(root), **SMALL)
    assert "Generating the synthetic dataset" in capsys.readouterr().out
    before = folder_bytes(root)
    synthetic.ensure(str(root), seed=5, **SMALL)
    assert capsys.readouterr().out == "" and folder_bytes(root) == before


def test_create_generates_a_missing_synthetic_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULTS", {**synthetic.DEFAULTS, **SMALL})
    root = tmp_path / "fresh"
    dataset = datasets.create("synthetic", root, combine_trainval=True, verbose=False)
    assert dataset.num_train_ids == SMALL["num_train_ids"] and (root / synthetic.INFO_FILE).is_file()


def test_options_change_the_sizes(tmp_path):
    count = synthetic.generate(tmp_path / "d", num_train_ids=2, num_test_ids=2, num_cameras=4, images_per_camera=1,
                               height=40, width=20)
    dataset = datasets.create("market", tmp_path / "d", combine_trainval=True, verbose=False)
    assert len(dataset.train) == 2 * 4 and dataset.num_train_ids == 2
    assert {camid for _, _, camid in dataset.train} == {0, 1, 2, 3}
    assert count == sum(len(files) for _, _, files in os.walk(tmp_path / "d")) - 1
    with Image.open(dataset.train[0][0]) as image:
        assert image.size == (20, 40)


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = synthetic.render
    monkeypatch.setattr(synthetic, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "cut", **SMALL)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("options,flag", [({"num_cameras": 1}, "--cameras"), ({"num_cameras": 10}, "--cameras"),
                                          ({"num_train_ids": 0}, "--train-ids"), ({"height": 8}, "--height"),
                                          ({"seed": -1}, "--seed")])
def test_bad_options(tmp_path, options, flag):
    with pytest.raises(UsageError, match=flag):
        synthetic.generate(tmp_path / "x", **{**SMALL, **options})


def test_command_line(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert synthetic.main([out, "--train-ids", "2", "--test-ids", "2", "--cameras", "2", "--height", "32",
                           "--width", "16", "--images-per-camera", "1"]) == 0
    assert "Generated" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["bounding_box_test", "bounding_box_train", "query", synthetic.INFO_FILE]
    assert synthetic.main([out]) == 2
    assert out in capsys.readouterr().err
