"""The dataset loaders on small folders written here: parsing, relabelling, junk, validation split, errors."""
import io
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from reid import datasets
from reid.datasets import base, duke, market
from reid.errors import UsageError

TRAIN_IDS = (2, 7, 11, 20, 33)
TEST_IDS = (4, 9)
STRAY_FILES = ("Thumbs.db", "readme.txt", "abc.jpg")


def image_bytes(format_name):
    buffer = io.BytesIO()
    Image.new("RGB", (2, 4), (120, 30, 200)).save(buffer, format=format_name)
    return buffer.getvalue()


JPEG, PNG = image_bytes("JPEG"), image_bytes("PNG")


def market_name(pid, cam, frame, extension="jpg"):
    person = "-1" if pid == -1 else f"{pid:04d}"
    return f"{person}_c{cam}s1_{frame:06d}_01.{extension}"


def write(folder, names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(PNG if name.endswith(".png") else JPEG)


def write_market(root):
    """Train: 5 ids x 3 cameras x 2 images. Query: the 2 test ids in camera 1. Gallery: the test ids in
    cameras 2 and 3, 2 distractors (id 0), 3 junk images (id -1). One stray file in every folder."""
    train = [market_name(pid, cam, frame, "png" if frame == 2 else "jpg")
             for pid in TRAIN_IDS for cam in (1, 2, 3) for frame in (1, 2)]
    write(os.path.join(root, "bounding_box_train"), train + ["Thumbs.db"])
    write(os.path.join(root, "query"), [market_name(pid, 1, 5) for pid in TEST_IDS] + ["readme.txt"])
    gallery = [market_name(pid, cam, 7) for pid in TEST_IDS for cam in (2, 3)]
    gallery += [market_name(0, 2, 8), market_name(0, 3, 9, "JPEG")]
    gallery += [market_name(-1, cam, 10) for cam in (1, 2, 3)]
    write(os.path.join(root, "bounding_box_test"), gallery + ["abc.jpg"])
    return str(root)


@pytest.fixture
def market_root(tmp_path):
    return write_market(tmp_path / "Market-1501")


def pids(items):
    return sorted({pid for _, pid, _ in items})


def test_names_and_aliases(market_root):
    assert datasets.names() == ["market", "duke", "synthetic"]
    for alias in ("market1501", "Market-1501", "MARKET"):
        assert datasets.canonical_name(alias) == "market"
    for alias in ("dukemtmc", "dukemtmc-reid", "DukeMTMC-reID"):
        assert datasets.canonical_name(alias) == "duke"
    assert datasets.create("market1501", market_root, verbose=False).name == "market"


def test_market_lists_relabels_and_drops_junk(market_root):
    dataset = datasets.create("market", market_root, combine_trainval=True, verbose=False)
    assert isinstance(dataset, datasets.ReidDataset) and dataset.root == market_root
    assert len(dataset.train) == 30 and dataset.num_train_ids == 5
    assert pids(dataset.train) == [0, 1, 2, 3, 4]
    original = {int(os.path.basename(path)[:4]) for path, label, _ in dataset.train if label == 3}
    assert original == {TRAIN_IDS[3]}, "labels follow the sorted original ids"
    assert dataset.val_query == [] and dataset.val_gallery == []
    assert pids(dataset.query) == list(TEST_IDS) and len(dataset.query) == 2
    assert pids(dataset.gallery) == [0, *TEST_IDS], "junk -1 dropped, distractors 0 kept"
    assert len(dataset.gallery) == 6
    assert dataset.num_ignored == len(STRAY_FILES)
    for path, _, camid in dataset.train + dataset.query + dataset.gallery:
        assert os.path.isfile(path)
        assert camid == int(os.path.basename(path).split("_")[1][1]) - 1
    assert {camid for _, _, camid in dataset.train} == {0, 1, 2}


def test_summary_table_is_printed(market_root, capsys):
    datasets.create("market", market_root, num_val=1)
    out = capsys.readouterr().out
    assert "Market1501 dataset loaded" in out
    assert "  subset   | # ids | # images" in out
    assert "  train    |     4 |       24" in out
    assert "  val      |     1 |        6" in out
    assert "  query    |     2 |        2" in out
    assert "  gallery  |     3 |        6" in out
    assert "ignored 3 files whose names do not match" in out


def test_quiet_creation_prints_nothing(market_root, capsys):
    datasets.create("market", market_root, verbose=False)
    assert capsys.readouterr().out == ""


def test_validation_split(market_root):
    dataset = datasets.create("market", market_root, combine_trainval=False, num_val=100, verbose=False)
    val = dataset.val_query + dataset.val_gallery
    assert len(pids(val)) == 1, "100 requested, scaled down to a fifth of the 5 training ids"
    assert dataset.num_train_ids == 4 and pids(dataset.train) == [0, 1, 2, 3]
    train_paths = {path for path, _, _ in dataset.train}
    val_paths = {path for path, _, _ in val}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 30
    held_out = {int(os.path.basename(path)[:4]) for path in val_paths}
    assert pids(val) == sorted(held_out) and held_out <= set(TRAIN_IDS)
    trained_ids = {int(os.path.basename(path)[:4]) for path in train_paths}
    assert not trained_ids & held_out
    pairs = [(pid, camid) for _, pid, camid in dataset.val_query]
    assert len(pairs) == len(set(pairs)) == 3, "one query per (id, camera)"
    assert len(dataset.val_gallery) == 3
    again = datasets.create("market", market_root, num_val=100, verbose=False)
    assert again.val_query == dataset.val_query, "the held-out ids are the same every time"


@pytest.mark.parametrize("num_ids,num_val,expected", [
    (751, 100, 100), (702, 100, 100), (300, 100, 60), (8, 100, 1), (5, 2, 1), (2, 100, 1), (1, 100, 0),
    (10, 0, 0), (0, 100, 0)])
def test_validation_size(num_ids, num_val, expected):
    assert base.validation_size(num_ids, num_val) == expected


def test_num_val_zero_keeps_every_training_id(market_root):
    dataset = datasets.create("market", market_root, num_val=0, verbose=False)
    assert dataset.num_train_ids == 5 and dataset.val_query == []


def test_duke_naming(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    write(root / "bounding_box_train", [f"{pid:04d}_c{cam}_f{frame:07d}.jpg"
                                        for pid in (1, 5, 8) for cam in (1, 8) for frame in (11, 12)])
    write(root / "query", ["0002_c8_f0046182.jpg", market_name(3, 1, 1)])
    write(root / "bounding_box_test", ["0002_c5_f0000001.jpg", "0000_c6_f0000002.jpg", "-1_c7_f0000003.jpg"])
    dataset = datasets.create("dukemtmc-reid", root, combine_trainval=True, verbose=False)
    assert dataset.name == "duke" and dataset.num_train_ids == 3 and len(dataset.train) == 12
    assert {camid for _, _, camid in dataset.train} == {0, 7}
    assert [(pid, camid) for _, pid, camid in dataset.query] == [(2, 7)]
    assert sorted((pid, camid) for _, pid, camid in dataset.gallery) == [(0, 5), (2, 4)]
    assert dataset.num_ignored == 1, "a Market-1501 name is not a DukeMTMC-reID name"


def test_missing_root_names_the_folder_and_the_alternatives(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError) as error:
        datasets.create("market", missing, verbose=False)
    message = str(error.value)
    assert str(missing) in message and "--data-dir" in message and "-d synthetic" in message
    assert "Market-1501" in message and "\n" not in message


def test_root_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        datasets.create("duke", path, verbose=False)


def test_missing_sub_folder_names_it_and_shows_the_contents(market_root):
    os.rename(os.path.join(market_root, "query"), os.path.join(market_root, "queries"))
    with pytest.raises(UsageError) as error:
        datasets.create("market", market_root, verbose=False)
    message = str(error.value)
    assert "no sub-folder query " in message and market_root in message
    assert "queries" in message and "bounding_box_test" in message


def test_split_without_usable_images(market_root):
    gallery = os.path.join(market_root, "bounding_box_test")
    for name in os.listdir(gallery):
        if not name.startswith("abc"):
            os.remove(os.path.join(gallery, name))
    with pytest.raises(UsageError) as error:
        datasets.create("market", market_root, verbose=False)
    assert gallery in str(error.value) and "1 files with other names" in str(error.value)


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(UsageError) as error:
        datasets.create("cuhk03", tmp_path)
    message = str(error.value)
    assert "'cuhk03'" in message and "-d/--dataset" in message
    assert all(name in message for name in datasets.names())


PIDS = st.one_of(st.just(-1), st.integers(0, 9999))
EXTENSIONS = st.sampled_from(["jpg", "jpeg", "png", "JPG", "PNG", "Jpeg"])


@given(pid=PIDS, cam=st.integers(1, 9), seq=st.integers(1, 9), frame=st.integers(0, 999999),
       box=st.integers(0, 99), extension=EXTENSIONS)
def test_market_names_round_trip(pid, cam, seq, frame, box, extension):
    person = "-1" if pid == -1 else f"{pid:04d}"
    name = f"{person}_c{cam}s{seq}_{frame:06d}_{box:02d}.{extension}"
    assert base.parse_name(name, market.PATTERN) == (pid, cam - 1)
    assert base.parse_name(name, duke.PATTERN) is None


@given(pid=PIDS, cam=st.integers(1, 9), frame=st.integers(0, 9999999), extension=EXTENSIONS)
def test_duke_names_round_trip(pid, cam, frame, extension):
    person = "-1" if pid == -1 else f"{pid:04d}"
    name = f"{person}_c{cam}_f{frame:07d}.{extension}"
    assert base.parse_name(name, duke.PATTERN) == (pid, cam - 1)
    assert base.parse_name(name, market.PATTERN) is None


@given(st.one_of(st.text(), st.from_regex(r"-?\d{1,5}_c\d{1,2}(s\d_\d{1,7}_\d{1,3}|_f\d{1,8})\.\w{2,5}")))
def test_garbage_names_never_crash(name):
    for pattern in (market.PATTERN, duke.PATTERN):
        parsed = base.parse_name(name, pattern)
        if parsed is not None:
            pid, camid = parsed
            assert pid >= -1 and 0 <= camid <= 8


@pytest.mark.parametrize("name", ["0001_c0s1_000001_01.jpg", "0001_c1s1_000001_01.gif", "0001_c1s1_000001_01",
                                  "-2_c1s1_000001_01.jpg", "._0001_c1s1_000001_01.jpg", "0001_c1s1_000001_01.jpg.bak",
                                  "0001_c12s1_000001_01.jpg"])
def test_names_that_do_not_parse(name):
    assert base.parse_name(name, market.PATTERN) is None


MARKET_BODIES = st.builds(lambda pid, cam: f"{'-1' if pid == -1 else f'{pid:04d}'}_c{cam}s1_000123_01", PIDS,
                          st.integers(1, 9))


@settings(max_examples=30, deadline=None)
@given(body=MARKET_BODIES, extension=st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=6))
def test_only_image_extensions_are_accepted(body, extension):
    parsed = base.parse_name(f"{body}.{extension}", market.PATTERN)
    assert (parsed is not None) == (extension.lower() in ("jpg", "jpeg", "png"))


FILE_NAMES = st.one_of(
    st.builds(lambda body, extension: f"{body}.{extension}", MARKET_BODIES, EXTENSIONS),
    st.text(st.characters(codec="ascii", categories=["L", "N", "P"], exclude_characters="/\\"), min_size=1,
            max_size=40).filter(lambda name: name not in (".", "..")))


@settings(max_examples=30, deadline=None)
@given(names=st.sets(FILE_NAMES, max_size=12))
def test_every_file_of_a_folder_is_listed_ignored_or_dropped_as_junk(names):
    """Each file is an item, ignored (counted), or junk (id -1, dropped); items come sorted by name."""
    with tempfile.TemporaryDirectory() as folder:
        write(folder, names)
        items, ignored = base.list_folder(folder, market.PATTERN)
    parsed = {name: base.parse_name(name, market.PATTERN) for name in names}
    junk = sum(1 for value in parsed.values() if value is not None and value[0] == base.JUNK_PID)
    assert len(items) + ignored + junk == len(names)
    assert ignored == sum(1 for value in parsed.values() if value is None)
    assert [os.path.basename(path) for path, _, _ in items] == sorted(
        name for name, value in parsed.items() if value is not None and value[0] != base.JUNK_PID)
    assert all((pid, camid) == parsed[os.path.basename(path)] for path, pid, camid in items)
