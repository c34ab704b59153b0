"""The dataset loaders on small folders written here: parsing, relabelling, junk, validation split, errors."""
import csv
import io
import json
import os
import re
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import main
from reid import datasets
from reid.datasets import base, custom, duke, market, msmt17
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
    assert datasets.names() == ["market", "duke", "msmt17", "cuhk03-np", "custom", "synthetic"]
    for alias in ("market1501", "Market-1501", "MARKET"):
        assert datasets.canonical_name(alias) == "market"
    for alias in ("dukemtmc", "dukemtmc-reid", "DukeMTMC-reID"):
        assert datasets.canonical_name(alias) == "duke"
    for alias in ("msmt17", "MSMT17_V1", "msmt17_v2", "MSMT"):
        assert datasets.canonical_name(alias) == "msmt17"
    for alias in ("cuhk03-np", "CUHK03NP", "cuhk03"):
        assert datasets.canonical_name(alias) == "cuhk03-np"
    assert datasets.canonical_name("Custom") == "custom"
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
        datasets.create("viper", tmp_path)
    message = str(error.value)
    assert "'viper'" in message and "-d/--dataset" in message
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


@pytest.mark.parametrize("name", ["0001_c0s1_000001_01.jpg", "0001_c1s1_000001_01.txt", "0001_c1s1_000001_01",
                                  "-2_c1s1_000001_01.jpg", "._0001_c1s1_000001_01.jpg", "0001_c1s1_000001_01.jpg.bak",
                                  "0001_c12s1_000001_01.jpg"])
def test_names_that_do_not_parse(name):
    assert base.parse_name(name, market.PATTERN) is None


MARKET_BODIES = st.builds(lambda pid, cam: f"{'-1' if pid == -1 else f'{pid:04d}'}_c{cam}s1_000123_01", PIDS,
                          st.integers(1, 9))


def test_image_extensions_are_those_pillow_decodes():
    readable = base.image_extensions()
    assert {"jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm"} <= readable
    assert not {"txt", "db", "json", "npy", "pdf", "h5", "py"} & readable, "non-images, or formats Pillow only names"
    assert base.is_image_name("0001_00.BMP") and base.is_image_name("a.b.Jpeg")
    assert not base.is_image_name(".jpg") and not base.is_image_name("jpg") and not base.is_image_name("a.jpg.bak")


@settings(max_examples=30, deadline=None)
@given(body=MARKET_BODIES, extension=st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=6))
def test_only_image_extensions_are_accepted(body, extension):
    parsed = base.parse_name(f"{body}.{extension}", market.PATTERN)
    assert (parsed is not None) == (extension.lower() in base.image_extensions())


def test_bmp_images_are_read_like_jpegs(market_root, tmp_path):
    """VIPeR ships BMP files: every format Pillow reads is an image of the dataset."""
    query = os.path.join(market_root, "query")
    Image.new("RGB", (2, 4)).save(os.path.join(query, market_name(4, 2, 6, "bmp")))
    Image.new("RGB", (2, 4)).save(os.path.join(query, market_name(9, 3, 6, "tif")))
    dataset = datasets.create("market", market_root, combine_trainval=True, verbose=False)
    assert sorted(os.path.basename(path)[-4:] for path, _, _ in dataset.query) == [".bmp", ".jpg", ".jpg", ".tif"]
    custom_dataset = datasets.create("custom", market_root, combine_trainval=True, verbose=False)
    assert custom_dataset.query == dataset.query


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


# Lists and tables shared by the new layouts -------------------------------------------------------------------

def write_lines(path, lines, newline="\n", ending="\n", bom=False):
    """A list file as editors leave them: ``newline`` between lines (``\\r\\n`` from Windows), ``ending``
    after the last one (``""``, or a blank line), optionally a UTF-8 byte-order mark."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = newline.join(lines) + ending
    with open(path, "wb") as handle:
        handle.write((b"\xef\xbb\xbf" if bom else b"") + text.encode())


def table(output):
    """The rows of the printed summary table (its title line excluded)."""
    lines = output.splitlines()
    start = lines.index("  subset   | # ids | # images")
    return lines[start:]


def row(subset, ids, images):
    return f"  {subset:<8} | {ids:5d} | {images:8d}"


def cameras(items):
    return sorted({camid for _, _, camid in items})


# MSMT17 -------------------------------------------------------------------------------------------------------

MSMT_TRAIN_IDS, MSMT_TEST_IDS = range(5), range(3)
MSMT_FOLDERS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


def msmt_name(pid, index, cam, frame):
    """A name as MSMT17 writes them: ``0000_000_01_0303morning_0015_0.jpg`` (pid, index, camera, day and
    time slot, frame, box)."""
    return f"{pid:04d}_{index:03d}_{cam:02d}_0303morning_{frame:04d}_{index % 2}.jpg"


def write_msmt17(root, version="MSMT17_V1"):
    """One MSMT17 version folder under ``root``. Train: 5 ids, images 0..2 in list_train.txt (cameras 1, 7,
    15), image 3 in list_val.txt (camera 7). Query: the 3 test ids in camera 2; gallery: them in cameras 3 and
    12. Also an image in no list, a Thumbs.db, list_train.txt with CRLF line ends, list_query.txt with a
    byte-order mark and list_gallery.txt ending with a blank line."""
    folder = os.path.join(root, version)
    train_folder, test_folder = MSMT_FOLDERS[version]
    lists = {"train": [], "val": [], "query": [], "gallery": []}
    for pid in MSMT_TRAIN_IDS:
        for index, cam in enumerate((1, 7, 15, 7)):
            lists["val" if index == 3 else "train"].append((train_folder, pid, msmt_name(pid, index, cam, 10 + index)))
    for pid in MSMT_TEST_IDS:
        lists["query"].append((test_folder, pid, msmt_name(pid, 0, 2, 20)))
        lists["gallery"] += [(test_folder, pid, msmt_name(pid, index, cam, 20 + index))
                             for index, cam in ((1, 3), (2, 12))]
    for entries in lists.values():
        for image_folder, pid, name in entries:
            write(os.path.join(folder, image_folder, f"{pid:04d}"), [name])
    write(os.path.join(folder, train_folder, "0001"), [msmt_name(1, 99, 5, 100)])
    write(os.path.join(folder, test_folder), ["Thumbs.db"])
    lines = {split: [f"{pid:04d}/{name} {pid}" for _, pid, name in entries] for split, entries in lists.items()}
    write_lines(os.path.join(folder, "list_train.txt"), lines["train"], newline="\r\n", ending="\r\n")
    write_lines(os.path.join(folder, "list_val.txt"), lines["val"], ending="")
    write_lines(os.path.join(folder, "list_query.txt"), lines["query"], bom=True)
    write_lines(os.path.join(folder, "list_gallery.txt"), lines["gallery"], ending="\n\n")
    return folder


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_reads_the_standard_lists(tmp_path, version, capsys):
    folder = write_msmt17(tmp_path, version)
    dataset = datasets.create("msmt17", folder, combine_trainval=True)
    assert table(capsys.readouterr().out) == ["  subset   | # ids | # images", "  " + "-" * 27,
                                              row("train", 5, 20), row("query", 3, 3), row("gallery", 3, 6)]
    assert dataset.num_train_ids == 5 and len(dataset.train) == 20, "list_train + list_val, the stray image unread"
    assert pids(dataset.query) == pids(dataset.gallery) == [0, 1, 2], "test ids as the lists give them"
    assert cameras(dataset.train) == [0, 6, 14] and cameras(dataset.query) == [1]
    assert cameras(dataset.gallery) == [2, 11]
    train_folder, test_folder = MSMT_FOLDERS[version]
    assert all(os.path.isfile(path) and f"{os.sep}{train_folder}{os.sep}" in path for path, _, _ in dataset.train)
    assert all(f"{os.sep}{test_folder}{os.sep}" in path for path, _, _ in dataset.query + dataset.gallery)
    assert dataset.num_ignored == 0


def test_msmt17_found_inside_the_folder_given_and_titled_by_its_version(tmp_path, capsys):
    write_msmt17(tmp_path / "msmt17", "MSMT17_V2")
    dataset = datasets.create("msmt17_v2", tmp_path / "msmt17", num_val=1)
    out = capsys.readouterr().out
    assert out.startswith("MSMT17_V2 dataset loaded\n")
    assert row("train", 4, 16) in out and row("val", 1, 4) in out
    assert dataset.name == "msmt17"


def test_msmt17_errors_name_the_list_file_and_line(tmp_path):
    folder = write_msmt17(tmp_path)
    query_list = os.path.join(folder, "list_query.txt")
    write_lines(query_list, ["0000/" + msmt_name(0, 0, 2, 20) + " 0", "0001/" + msmt_name(1, 0, 2, 20)])
    with pytest.raises(UsageError, match=rf"^{re.escape(query_list)} line 2: expected two fields"):
        datasets.create("msmt17", folder, verbose=False)
    write_lines(query_list, ["0000/" + msmt_name(0, 0, 2, 20) + " 0", "0009/" + msmt_name(9, 0, 2, 20) + " 9"])
    with pytest.raises(UsageError) as error:
        datasets.create("msmt17", folder, verbose=False)
    assert str(error.value).startswith(f"{query_list} line 2: the image ")
    assert "1 of the 2 images it lists are missing" in str(error.value)
    write_lines(query_list, ["0000/" + msmt_name(0, 0, 16, 20) + " 0"])
    with pytest.raises(UsageError, match=r"line 1: .* camera, 01\.\.15"):
        datasets.create("msmt17", folder, verbose=False)
    write_lines(query_list, ["0000/" + msmt_name(0, 0, 2, 20) + " zero"])
    with pytest.raises(UsageError, match=r"line 1: the pid 'zero' is not a whole number"):
        datasets.create("msmt17", folder, verbose=False)
    os.remove(query_list)
    with pytest.raises(UsageError, match=r"list_query\.txt is missing"):
        datasets.create("msmt17", folder, verbose=False)


@pytest.mark.parametrize("path,camera", [("0000/0000_000_01_0303morning_0015_0.jpg", 1),
                                         ("0114/0114_019_10_0303noon_0284_2_ex.jpg", 10),
                                         ("3059/3059_011_15_0114afternoon_1220_1.jpg", 15),
                                         ("0001/0001_c1s1_000451_03.jpg", None)])
def test_msmt17_camera_is_the_third_field(path, camera):
    assert msmt17.camera_of(path) == camera


def test_msmt17_folder_that_is_not_one(tmp_path, market_root):
    with pytest.raises(UsageError) as error:
        datasets.create("msmt17", market_root, verbose=False)
    assert "not an MSMT17 folder" in str(error.value) and "bounding_box_train" in str(error.value)
    write_msmt17(tmp_path / "both", "MSMT17_V1")
    write_msmt17(tmp_path / "both", "MSMT17_V2")
    with pytest.raises(UsageError, match="holds both MSMT17_V1 and MSMT17_V2"):
        datasets.create("msmt17", tmp_path / "both", verbose=False)


# CUHK03-NP ----------------------------------------------------------------------------------------------------

def write_cuhk03np(root):
    """``cuhk03-np/{labeled,detected}`` with PNG images named ``PPPP_cC_N.png``. Train: ids 1..5, cameras 1
    and 2, images 1..2 each (detected lacks one: 19). Query: ids 6 and 7, image 1 of each camera. Gallery:
    their images 2..3 of each camera (detected has one more: 9). A Thumbs.db in labeled's training folder."""
    folder = os.path.join(root, "cuhk03-np")
    for variant in ("labeled", "detected"):
        train = [f"{pid:04d}_c{cam}_{index}.png" for pid in range(1, 6) for cam in (1, 2) for index in (1, 2)]
        query = [f"{pid:04d}_c{cam}_1.png" for pid in (6, 7) for cam in (1, 2)]
        gallery = [f"{pid:04d}_c{cam}_{index}.png" for pid in (6, 7) for cam in (1, 2) for index in (2, 3)]
        if variant == "detected":
            train.remove("0003_c2_2.png")
            gallery.append("0007_c2_4.png")
        else:
            train.append("Thumbs.db")
        write(os.path.join(folder, variant, "bounding_box_train"), train)
        write(os.path.join(folder, variant, "query"), query)
        write(os.path.join(folder, variant, "bounding_box_test"), gallery)
    return folder


@pytest.mark.parametrize("variant,train_images,gallery_images,ignored", [("labeled", 20, 8, 1),
                                                                          ("detected", 19, 9, 0)])
def test_cuhk03np_variants(tmp_path, variant, train_images, gallery_images, ignored, capsys):
    folder = write_cuhk03np(tmp_path)
    dataset = datasets.create("cuhk03-np", folder, combine_trainval=True, cuhk03=variant)
    out = capsys.readouterr().out
    assert out.startswith(f"CUHK03-NP ({variant}) dataset loaded\n")
    assert table(out)[2:5] == [row("train", 5, train_images), row("query", 2, 4), row("gallery", 2, gallery_images)]
    assert dataset.num_ignored == ignored
    assert all(path.endswith(".png") and f"{os.sep}{variant}{os.sep}" in path
               for path, _, _ in dataset.train + dataset.query + dataset.gallery)
    assert cameras(dataset.train) == cameras(dataset.query) == cameras(dataset.gallery) == [0, 1]
    assert pids(dataset.query) == [6, 7]
    with open(dataset.query[0][0], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cuhk03np_defaults_to_labeled_and_finds_the_unpacked_folder(tmp_path):
    write_cuhk03np(tmp_path)
    dataset = datasets.create("cuhk03", tmp_path, combine_trainval=True, verbose=False)
    assert dataset.name == "cuhk03-np" and len(dataset.train) == 20


def test_cuhk03np_errors(tmp_path):
    folder = write_cuhk03np(tmp_path)
    with pytest.raises(UsageError, match="--cuhk03"):
        datasets.create("cuhk03-np", os.path.join(folder, "labeled"), verbose=False)
    with pytest.raises(UsageError, match=r"Unknown CUHK03-NP variant 'classic' \(--cuhk03\)"):
        datasets.create("cuhk03-np", folder, cuhk03="classic", verbose=False)
    with pytest.raises(UsageError, match="has no sub-folder labeled"):
        datasets.create("cuhk03-np", tmp_path / "cuhk03-np" / "detected" / "query", verbose=False)


# Custom data --------------------------------------------------------------------------------------------------

CUSTOM = {"train": [(7, 1), (7, 2), (7, 1), (9, 1), (9, 3)], "query": [(40, 1), (41, 1)],
          "gallery": [(40, 2), (40, 3), (41, 2), (42, 3)]}
CUSTOM_TABLE = [row("train", 2, 5), row("query", 2, 2), row("gallery", 3, 4)]


def custom_name(pid, cam, index):
    return f"{pid:04d}_c{cam}_{index:02d}.jpg"


def write_custom(root, form):
    """The images of ``CUSTOM`` ((pid, camera) per image) in one of the three forms, plus a notes.txt in the
    training folder (or an image in no list) that the loader must leave out."""
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    lines = {}
    for split, images in CUSTOM.items():
        names = [custom_name(pid, cam, index) for index, (pid, cam) in enumerate(images)]
        if form == "image folders":
            write(os.path.join(root, folders[split]), names)
        elif form == "identity folders":
            for name, (pid, _) in zip(names, images):
                write(os.path.join(root, split, f"{pid:04d}"), [name])
        else:
            write(os.path.join(root, "images", split), names)
            lines[split] = [f"images/{split}/{name} {pid} {cam}" for name, (pid, cam) in zip(names, images)]
    if form == "list files":
        write(os.path.join(root, "images"), ["unlisted.jpg"])
        write_lines(os.path.join(root, "train.txt"), ["# path pid camid", *lines["train"]], newline="\r\n",
                    ending="\r\n\r\n")
        write_lines(os.path.join(root, "query.txt"), lines["query"], ending="")
        write_lines(os.path.join(root, "gallery.txt"), lines["gallery"], ending="\n\n")
    else:
        train_folder = "bounding_box_train" if form == "image folders" else "train"
        write(os.path.join(root, train_folder), ["notes.txt"])
    return str(root)


def labels(items):
    return sorted((pid, camid) for _, pid, camid in items)


@pytest.mark.parametrize("form,pattern,ignored", [("image folders", None, 1),
                                                  ("identity folders", r"_c(?P<camid>\d+)_", 1),
                                                  ("list files", None, 0)])
def test_custom_forms_print_the_same_table_and_items(tmp_path, form, pattern, ignored, capsys):
    root = write_custom(tmp_path / "mine", form)
    dataset = datasets.create("custom", root, combine_trainval=True, name_pattern=pattern)
    out = capsys.readouterr().out
    assert out.startswith(f"Custom ({form}) dataset loaded\n")
    assert table(out)[2:5] == CUSTOM_TABLE and dataset.num_ignored == ignored
    assert labels(dataset.train) == [(0, 0), (0, 0), (0, 1), (1, 0), (1, 2)], "relabelled; cameras 1, 2, 3 -> 0..2"
    assert labels(dataset.query) == [(40, 0), (41, 0)]
    assert labels(dataset.gallery) == [(40, 1), (40, 2), (41, 1), (42, 2)]
    assert all(os.path.isfile(path) for path, _, _ in dataset.train + dataset.query + dataset.gallery)
    assert not any("unlisted" in path for path, _, _ in dataset.train + dataset.query + dataset.gallery)


def test_custom_image_folders_read_market_names_like_the_market_loader(market_root):
    mine = datasets.create("custom", market_root, combine_trainval=True, verbose=False)
    market_dataset = datasets.create("market", market_root, combine_trainval=True, verbose=False)
    for split in ("train", "query", "gallery"):
        assert getattr(mine, split) == getattr(market_dataset, split)
    assert mine.num_ignored == market_dataset.num_ignored == 3


def test_custom_name_pattern_with_other_names(tmp_path):
    write(tmp_path / "train", ["alice-cam2-001.jpg", "alice-cam1-002.jpg", "bob-cam1-001.png", "group photo.jpg"])
    write(tmp_path / "query", ["carol-cam1-001.jpg"])
    write(tmp_path / "gallery", ["carol-cam2-001.jpg", "dave-cam2-001.jpg"])
    dataset = datasets.create("custom", tmp_path, combine_trainval=True, verbose=False,
                              name_pattern=r"^(?P<pid>[a-z]+)-cam(?P<camid>\d+)-")
    assert labels(dataset.train) == [(0, 0), (0, 1), (1, 0)] and dataset.num_ignored == 1
    assert labels(dataset.query) == [(0, 0)] and labels(dataset.gallery) == [(0, 1), (1, 1)]


def test_custom_numbering_of_identities_and_cameras():
    assert custom.identity_numbers(["0007", "12", "7"]) == {"0007": 7, "12": 12, "7": 7}
    assert custom.identity_numbers(["bob", "0007", "alice"]) == {"0007": 0, "alice": 1, "bob": 2}
    assert custom.camera_numbers(["10", "02", "2", "1"]) == {"1": 0, "02": 1, "2": 1, "10": 2}
    assert custom.camera_numbers(["west", "east", "3"]) == {"3": 0, "east": 1, "west": 2}


def test_custom_identity_folders_without_cameras(tmp_path, capsys):
    for split, identities in {"train": {"alice": 3, "bob": 2, "carol": 2}, "query": {"dave": 1, "erin": 1},
                              "gallery": {"dave": 2, "erin": 1, "frank": 1}}.items():
        for identity, count in identities.items():
            write(tmp_path / split / identity, [f"{index}.jpg" for index in range(count)])
    write(tmp_path / "train", ["desktop.ini"])
    write(tmp_path / "train" / "bob", ["notes.txt"])
    dataset = datasets.create("custom", tmp_path, num_val=1)
    assert table(capsys.readouterr().out)[2:6] == [row("train", 2, 4), row("val", 1, 3), row("query", 2, 2),
                                                    row("gallery", 3, 4)]
    assert dataset.num_ignored == 2
    assert cameras(dataset.train) == [0]
    assert labels(dataset.query) == [(0, 0), (1, 0)], "dave, erin: numbered in sorted order, query camera 0"
    assert labels(dataset.gallery) == [(0, 1), (0, 1), (1, 1), (2, 1)], "gallery camera 1: every match counts"
    assert [camid for _, _, camid in dataset.val_query] == [0]
    assert [camid for _, _, camid in dataset.val_gallery] == [1, 1], "held-out images match across 'cameras'"


def test_custom_lists_without_cameras_and_numbered_identities(tmp_path):
    write(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    write_lines(tmp_path / "train.txt", ["img/a.jpg 12", "img/b.jpg 3"])
    write_lines(tmp_path / "query.txt", ["# one query", "img/c.jpg 0005"])
    write_lines(tmp_path / "gallery.txt", [f"{tmp_path}/img/d.jpg 5", "img/a.jpg 8"])
    dataset = datasets.create("custom", tmp_path, combine_trainval=True, verbose=False)
    assert labels(dataset.train) == [(0, 0), (1, 0)]
    assert labels(dataset.query) == [(5, 0)] and labels(dataset.gallery) == [(5, 1), (8, 1)]
    assert dataset.gallery[0][0] == f"{tmp_path}/img/d.jpg", "absolute paths are kept"


def custom_lists(root, train=("img/a.jpg 1 1",), query=("img/b.jpg 2 1",), gallery=("img/c.jpg 2 2",)):
    write(os.path.join(root, "img"), ["a.jpg", "b.jpg", "c.jpg"])
    for split, lines in (("train", train), ("query", query), ("gallery", gallery)):
        write_lines(os.path.join(root, f"{split}.txt"), list(lines))
    return str(root)


@pytest.mark.parametrize("split,lines,message", [
    ("train", ["img/a.jpg 1 1", "# comment", "img/a.jpg"], r"train\.txt line 3: expected `path pid \[camid\]`"),
    ("train", ["my image.jpg 1"], r"train\.txt line 1: the pid 'image\.jpg' is not a whole number"),
    ("train", ["img/a.jpg 1 one"], r"train\.txt line 1: the camid 'one' is not a whole number"),
    ("train", ["img/a.jpg 1 1", "img/a.jpg 1"], r"train\.txt line 2: no camid, unlike the lines above"),
    ("gallery", ["img/c.jpg 2 2", "img/x.jpg 2 2"], r"gallery\.txt line 2: the image .*x\.jpg does not exist"),
    ("query", ["img/b.jpg 2 1", "img/a.jpg 3 1"], r"query\.txt line 2: the query identity 3 has no image in the "
                                                  r"gallery \(1 query images"),
    ("query", ["img/b.jpg 2"], r"query images have cameras|gallery images have cameras"),
    ("query", ["# nothing yet", ""], r"The query split .*query\.txt of the custom dataset has no usable image"),
])
def test_custom_list_errors_name_the_file_and_line(tmp_path, split, lines, message):
    root = custom_lists(tmp_path, **{split: lines})
    with pytest.raises(UsageError, match=message) as error:
        datasets.create("custom", root, verbose=False)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_custom_query_identity_absent_from_gallery_folders(tmp_path):
    write_custom(tmp_path, "identity folders")
    write(tmp_path / "query" / "0099", ["lost.jpg"])
    with pytest.raises(UsageError) as error:
        datasets.create("custom", tmp_path, verbose=False)
    assert str(error.value).startswith(f"{tmp_path / 'query' / '0099' / 'lost.jpg'}: the query identity 99 has no")


def test_custom_layout_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist; -d custom reads one of these forms"):
        datasets.create("custom", tmp_path / "nowhere", verbose=False)
    write(tmp_path / "train", ["0001_c1_01.jpg"])
    with pytest.raises(UsageError, match=r"has none of the expected forms \(it contains: train\)"):
        datasets.create("custom", tmp_path, verbose=False)
    write_lines(tmp_path / "train.txt", ["train/0001_c1_01.jpg 1"])
    with pytest.raises(UsageError, match=r"has list files but not .*query\.txt or .*gallery\.txt"):
        datasets.create("custom", tmp_path, verbose=False)


@pytest.mark.parametrize("pattern,message", [
    (r"(?P<pid>\d+", r"--name-pattern '\(\?P<pid>\\\\d\+' is not a valid regular expression"),
    (r"(?P<pid>\d+)_c(\d+)", r"has no named group camid"),
])
def test_custom_name_pattern_errors(market_root, pattern, message):
    with pytest.raises(UsageError, match=message):
        datasets.create("custom", market_root, name_pattern=pattern, verbose=False)


def test_custom_optional_group_names_the_file_and_the_pattern(market_root):
    """A group that may match nothing used to crash with a TypeError; now the message names file and pattern."""
    write(os.path.join(market_root, "query"), ["_c1s1_000001_01.jpg"])
    pattern = r"^(?P<pid>\d+)?_c(?P<camid>\d+)"
    with pytest.raises(UsageError) as error:
        datasets.create("custom", market_root, name_pattern=pattern, verbose=False)
    message = str(error.value)
    assert message.startswith(os.path.join(market_root, "query", "_c1s1_000001_01.jpg"))
    assert repr(pattern) in message and "group pid matched nothing" in message


# One folder of every image, split by identity parity (--split parity) -----------------------------------------

ONE_FOLDER = {0: (0, 1, 5), 1: (2, 0, 3, 7, 6), 2: (1, 6), 3: (4, 1, 9, 5), 4: (3,), 5: (0, 8, 5)}
ONE_FOLDER_PATTERN = r"^(?P<pid>\d+)_(?P<index>\d+)\.jpg$"
ONE_FOLDER_RULES = dict(name_pattern=ONE_FOLDER_PATTERN, camera_ranges="0-4,5-9", split="parity")


def write_one_folder(root, images=ONE_FOLDER, extra=("notes.txt",)):
    """``PPPP_II.jpg`` for each identity's image indices (II 00-04: camera 1, 05-09: camera 2), written in the
    order given, each a different colour (no two are the same image); plus ``extra`` files."""
    os.makedirs(root, exist_ok=True)
    for pid, indices in images.items():
        for index in indices:
            colour = (pid * 30 % 256, index * 25, 90)
            Image.new("RGB", (4, 8), colour).save(os.path.join(root, f"{pid:04d}_{index:02d}.jpg"))
    write(root, list(extra))
    return str(root)


def names_of(items):
    return [(os.path.basename(path), pid, camid) for path, pid, camid in items]


def test_one_folder_split_by_parity(tmp_path, capsys):
    root = write_one_folder(tmp_path / "people")
    dataset = datasets.create("custom", root, combine_trainval=True, **ONE_FOLDER_RULES)
    out = capsys.readouterr().out
    assert out.startswith("Custom (one folder, parity split) dataset loaded\n")
    assert table(out)[2:5] == [row("train", 3, 6), row("query", 3, 6), row("gallery", 3, 6)]
    assert dataset.num_ignored == 1
    assert names_of(dataset.train) == [("0000_00.jpg", 0, 0), ("0000_01.jpg", 0, 0), ("0000_05.jpg", 0, 1),
                                       ("0002_01.jpg", 1, 0), ("0002_06.jpg", 1, 1), ("0004_03.jpg", 2, 0)]
    assert names_of(dataset.query) == [("0001_00.jpg", 1, 0), ("0001_06.jpg", 1, 1), ("0003_01.jpg", 3, 0),
                                       ("0003_05.jpg", 3, 1), ("0005_00.jpg", 5, 0), ("0005_05.jpg", 5, 1)]
    assert names_of(dataset.gallery) == [("0001_02.jpg", 1, 0), ("0001_03.jpg", 1, 0), ("0001_07.jpg", 1, 1),
                                         ("0003_04.jpg", 3, 0), ("0003_09.jpg", 3, 1), ("0005_08.jpg", 5, 1)]


def test_one_folder_split_is_deterministic(tmp_path):
    """The same files, written in another order into another folder, give the same split."""
    first = datasets.create("custom", write_one_folder(tmp_path / "a"), combine_trainval=True, verbose=False,
                            **ONE_FOLDER_RULES)
    reordered = {pid: tuple(reversed(indices)) for pid, indices in reversed(ONE_FOLDER.items())}
    second = datasets.create("custom", write_one_folder(tmp_path / "b", reordered), combine_trainval=True,
                             verbose=False, **ONE_FOLDER_RULES)
    for split in ("train", "query", "gallery"):
        assert names_of(getattr(first, split)) == names_of(getattr(second, split))
    held_out = datasets.create("custom", tmp_path / "a", num_val=1, verbose=False, **ONE_FOLDER_RULES)
    assert names_of(held_out.val_query) == [("0000_00.jpg", 0, 0), ("0000_05.jpg", 0, 1)], "per camera"
    assert names_of(held_out.val_gallery) == [("0000_01.jpg", 0, 0)]


def test_one_folder_query_is_the_lowest_index_not_the_first_name(tmp_path):
    write(tmp_path, ["0001_12.jpg", "0001_7.jpg", "0001_3.jpg", "0001_10.jpg", "0001_2.jpg", "0000_1.jpg"])
    dataset = datasets.create("custom", tmp_path, combine_trainval=True, verbose=False, split="parity",
                              name_pattern=r"^(?P<pid>\d+)_(?P<index>\d+)\.", camera_ranges="0-4,5-19")
    assert names_of(dataset.query) == [("0001_2.jpg", 1, 0), ("0001_7.jpg", 1, 1)]
    assert names_of(dataset.gallery) == [("0001_3.jpg", 1, 0), ("0001_10.jpg", 1, 1), ("0001_12.jpg", 1, 1)]


def test_one_folder_cameras_from_the_camid_group_or_none(tmp_path):
    write(tmp_path / "market", ["0001_c1_a.jpg", "0001_c3_b.jpg", "0001_c3_c.jpg", "0002_c2_a.jpg"])
    dataset = datasets.create("custom", tmp_path / "market", combine_trainval=True, verbose=False, split="parity")
    assert names_of(dataset.query) == [("0001_c1_a.jpg", 1, 0), ("0001_c3_b.jpg", 1, 2)]
    assert names_of(dataset.gallery) == [("0001_c3_c.jpg", 1, 2)]
    write(tmp_path / "plain", ["bob-2.jpg", "bob-1.jpg", "ann-1.jpg", "cat-1.jpg"])
    dataset = datasets.create("custom", tmp_path / "plain", combine_trainval=True, verbose=False, split="parity",
                              name_pattern=r"^(?P<pid>[a-z]+)-")
    assert names_of(dataset.train) == [("ann-1.jpg", 0, 0), ("cat-1.jpg", 1, 0)], "names numbered in sorted order"
    assert names_of(dataset.query) == [("bob-1.jpg", 0, 0)] and names_of(dataset.gallery) == [("bob-2.jpg", 0, 1)]


@pytest.mark.parametrize("images,extra,message", [
    ({}, ("0007.jpg",), r"0007\.jpg: the name does not match --name-pattern '.*index.*'\. With --split, every "
                        r"image directly in"),
    ({3: (12,)}, (), r"0003_12\.jpg: the image index 12 is in no range of --camera-ranges 0-4,5-9"),
    ({7: (0, 1)}, (), r"the test identity 0007 is seen by camera 1 only \(e\.g\. .*0007_00\.jpg; 1 of the 4 test "
                      r"identities are\)\. --split parity"),
    ({9: (0, 5)}, (), r"0009_00\.jpg: the query identity 9 has no image in the gallery"),
])
def test_one_folder_errors_name_the_file_and_the_rule(tmp_path, images, extra, message):
    root = write_one_folder(tmp_path, {**ONE_FOLDER, **images}, extra)
    with pytest.raises(UsageError, match=message) as error:
        datasets.create("custom", root, verbose=False, **ONE_FOLDER_RULES)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("options,message", [
    (dict(camera_ranges="0-4;5-9"), r"--camera-ranges '0-4;5-9': '0-4;5-9' is not a range of image indices"),
    (dict(camera_ranges="4-0,5-9"), r"the range 4-0 ends before it starts"),
    (dict(camera_ranges="0-5,5-9"), r"the ranges 0-5 and 5-9 overlap"),
    (dict(name_pattern=r"^(?P<pid>\d+)_(?P<camid>\d)(?P<index>\d)"), r"has a camid group and --camera-ranges"),
    (dict(name_pattern=r"^(?P<pid>\d+)_"), r"has no named group index; it needs \(\?P<pid>\.\.\.\) and "
                                            r"\(\?P<index>\.\.\.\)"),
    (dict(name_pattern=r"^(?P<pid>\d+)_(?P<index>\d+)?"), r"0006_x\.jpg: --name-pattern .* its group index "
                                                          r"matched nothing"),
    (dict(split="halves"), r"Unknown --split 'halves'; choose one of: parity"),
])
def test_one_folder_rule_errors(tmp_path, options, message):
    root = write_one_folder(tmp_path, extra=("0006_x.jpg",))
    with pytest.raises(UsageError, match=message):
        datasets.create("custom", root, verbose=False, **{**ONE_FOLDER_RULES, **options})


def test_one_folder_layout_errors(tmp_path):
    root = write_one_folder(tmp_path / "people")
    with pytest.raises(UsageError, match=r"none of the expected forms .* It holds images directly: to split that "
                                         r"one folder by identity, add --split parity"):
        datasets.create("custom", root, verbose=False)
    write(tmp_path / "empty", ["notes.txt"])
    with pytest.raises(UsageError, match=r"empty \(--split parity\) holds no image files .*it contains: notes\.txt"):
        datasets.create("custom", tmp_path / "empty", verbose=False, **ONE_FOLDER_RULES)
    evens = write_one_folder(tmp_path / "evens", {0: (0, 5), 2: (0, 5)})
    with pytest.raises(UsageError, match=r"has no odd-numbered identity, so --split parity leaves its test split "
                                         r"empty \(2 identities in all\)"):
        datasets.create("custom", evens, verbose=False, **ONE_FOLDER_RULES)
    lists = custom_lists(tmp_path / "lists")
    with pytest.raises(UsageError, match=r"--camera-ranges 0-4,5-9 reads the image index in file names; list files"):
        datasets.create("custom", lists, verbose=False, camera_ranges="0-4,5-9")


def test_camera_ranges_in_image_folders(tmp_path):
    write(tmp_path / "train", ["0001_00.jpg", "0001_07.jpg"])
    write(tmp_path / "query", ["0002_01.jpg"])
    write(tmp_path / "gallery", ["0002_05.jpg", "0002_09.jpg"])
    dataset = datasets.create("custom", tmp_path, combine_trainval=True, verbose=False,
                              name_pattern=ONE_FOLDER_PATTERN, camera_ranges="0-4,5-9")
    assert labels(dataset.train) == [(0, 0), (0, 1)] and labels(dataset.gallery) == [(2, 1), (2, 1)]


def test_main_checks_and_passes_the_one_folder_flags():
    argv = ["-d", "custom", "--data-dir", "people", "--name-pattern", ONE_FOLDER_PATTERN,
            "--camera-ranges", "0-4,5-9", "--split", "parity"]
    config = main.run_config(main.get_args_parser().parse_args(argv), ["main.py", *argv])
    assert (config.data.camera_ranges, config.data.split) == ("0-4,5-9", "parity")
    for flag, value in (("--camera-ranges", "0-4,5-9"), ("--split", "parity")):
        with pytest.raises(UsageError, match=f"{flag} applies to -d custom"):
            main.check_args(main.get_args_parser().parse_args(["-d", "market", flag, value]))


def test_parse_test_dataset():
    assert datasets.parse_test_dataset("market") == ("market", os.path.join("data", "market"))
    assert datasets.parse_test_dataset("Market-1501:/data/Market-1501") == ("market", "/data/Market-1501")
    assert datasets.parse_test_dataset("custom:C:/images") == ("custom", "C:/images")
    assert datasets.parse_test_dataset("MSMT17_V2") == ("msmt17", os.path.join("data", "msmt17"))
    with pytest.raises(UsageError, match=r"Unknown dataset 'viper' \(--test-dataset\)"):
        datasets.parse_test_dataset("viper:data/viper")
    with pytest.raises(UsageError, match="names no folder after the colon"):
        datasets.parse_test_dataset("market:")


# One short training and evaluation per new kind, on the tiny synthetic images in each layout -------------------

def copy_items(dataset, place):
    """Copy the synthetic dataset's images to ``place(split, index, pid, camid)`` (a path; a .png one gets
    the image re-encoded as PNG)."""
    for split in ("train", "query", "gallery"):
        for index, (path, pid, camid) in enumerate(getattr(dataset, split)):
            target = place(split, index, pid, camid)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with Image.open(path) as image:
                image.save(target)


def as_msmt17(dataset, root):
    folder = os.path.join(root, "MSMT17_V1")
    lists = {name: [] for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")}
    val_ids = set()

    def place(split, index, pid, camid):
        relative = f"{pid:04d}/{msmt_name(pid, index, camid + 1, index)}"
        list_name = f"list_{split}.txt"
        if split == "train" and pid not in val_ids:
            val_ids.add(pid)
            list_name = "list_val.txt"
        lists[list_name].append(f"{relative} {pid}")
        return os.path.join(folder, "train" if split == "train" else "test", relative)

    copy_items(dataset, place)
    for name, lines in lists.items():
        write_lines(os.path.join(folder, name), lines)
    return root


def as_cuhk03np(dataset, root):
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    copy_items(dataset, lambda split, index, pid, camid: os.path.join(
        root, "labeled", folders[split], f"{pid:04d}_c{camid % 2 + 1}_{index}.png"))
    return root


def as_identity_folders(dataset, root):
    copy_items(dataset, lambda split, index, pid, camid: os.path.join(root, split, f"person{pid}", f"{index}.jpg"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind,title,build", [("msmt17", "MSMT17_V1", as_msmt17),
                                              ("cuhk03-np", "CUHK03-NP (labeled)", as_cuhk03np),
                                              ("custom", "Custom (identity folders)", as_identity_folders)])
def test_training_and_evaluation(tiny_synthetic, tiny_args, tmp_path, kind, title, build):
    source = datasets.create("synthetic", tiny_synthetic, combine_trainval=True, verbose=False)
    root = build(source, str(tmp_path / kind))
    logs = tmp_path / "logs"
    assert main.main(tiny_args(root, logs, "-d", kind, "--epochs", "1", "--num-val", "1")) == 0
    log = (logs / "log.txt").read_text()
    assert f"{title} dataset loaded" in log
    assert "  val      |     1 |" in log and "  query    |     6 |        6" in log
    results = json.loads((logs / "results.json").read_text())
    assert results["dataset"] == kind and 0 < results["mAP"] <= 1 and 0 <= results["rank1"] <= 1
    with open(logs / "metrics.csv") as handle:
        assert next(csv.DictReader(handle))["eval_split"] == "val"


@pytest.mark.slow
def test_main_passes_cuhk03_and_name_pattern_to_the_loaders(tiny_synthetic, tiny_args, tmp_path, capsys):
    """--cuhk03 and --name-pattern reach the loaders (an untrained model is evaluated: --epochs 0)."""
    source = datasets.create("synthetic", tiny_synthetic, combine_trainval=True, verbose=False)
    detected_only = as_cuhk03np(source, str(tmp_path / "cuhk03-np"))
    os.rename(os.path.join(detected_only, "labeled"), os.path.join(detected_only, "detected"))
    argv = tiny_args(detected_only, tmp_path / "cuhk", "-d", "cuhk03-np", "--cuhk03", "detected", "--epochs", "0")
    assert main.main(argv) == 0
    assert "CUHK03-NP (detected) dataset loaded" in capsys.readouterr().out
    shop = tmp_path / "shop"
    copy_items(source, lambda split, index, pid, camid: os.path.join(
        shop, split, f"person{pid}-cam{camid + 1}-{index}.jpg"))
    argv = tiny_args(shop, tmp_path / "shop-logs", "-d", "custom", "--epochs", "0",
                     "--name-pattern", r"^person(?P<pid>\d+)-cam(?P<camid>\d+)-")
    assert main.main(argv) == 0
    assert table(capsys.readouterr().out)[2:5] == [row("train", 7, 50), row("val", 1, 7), row("query", 6, 6)]


@pytest.mark.slow
def test_main_reads_one_folder_with_split_parity(tiny_args, tmp_path, capsys):
    """--name-pattern, --camera-ranges and --split reach the loader (an untrained model is evaluated)."""
    root = write_one_folder(tmp_path / "people")
    argv = tiny_args(root, tmp_path / "logs", "-d", "custom", "--epochs", "0", "--combine-trainval",
                     "--name-pattern", ONE_FOLDER_PATTERN, "--camera-ranges", "0-4,5-9", "--split", "parity")
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "Custom (one folder, parity split) dataset loaded" in out
    assert table(out)[2:5] == [row("train", 3, 6), row("query", 3, 6), row("gallery", 3, 6)]
