"""reid.search: builds, reuses and updates its gallery index, ranks a known match first, writes the rank lists,
results.csv and an HTML page whose images exist; skips what it cannot read; clear errors for bad input; writes
only into a new, empty or earlier search's --out apart from its inputs; never ranks a query as its own match."""
import csv
import hashlib
import html.parser
import io
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import urllib.parse
import zlib

import numpy as np
import pytest
from PIL import Image
from torchvision.io import write_png

from reid import search
from reid.images import read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOID_ELEMENTS = {"meta", "img", "br", "link", "hr", "input"}


@pytest.fixture
def gallery(market_items, tiny_synthetic, tmp_path):
    """The tiny test gallery spread over sub-folders as JPEG, PNG, WebP and BMP, plus a text file and a damaged JPEG;
    ``cam9/0001_c9s1_000000_00.png`` is a PNG copy of the first query image (same person, another camera)."""
    folder = tmp_path / "crops"
    items = market_items(os.path.join(tiny_synthetic, "bounding_box_test"))[:12]
    for number, (path, _, _) in enumerate(items):
        name = os.path.splitext(os.path.basename(path))[0]
        target = folder / f"day{number % 3}"
        target.mkdir(parents=True, exist_ok=True)
        if number % 3 == 0:
            shutil.copy(path, target / f"{name}.jpg")
        elif number % 3 == 1:
            write_png(read_image(path), str(target / f"{name}.png"))
        else:
            with Image.open(path) as image:
                if number == 2:  # VIPeR's format, and many users' folders
                    image.save(target / f"{name}.bmp", format="BMP")
                else:
                    image.save(target / f"{name}.webp", format="WEBP", quality=90)
    query_path, pid, _ = market_items(os.path.join(tiny_synthetic, "query"))[0]
    (folder / "cam9").mkdir()
    write_png(read_image(query_path), str(folder / "cam9" / f"{pid:04d}_c9s1_000000_00.png"))
    (folder / "notes.txt").write_text("camera 3 was moved on Tuesday")
    (folder / "day1" / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return folder


@pytest.fixture
def query(market_items, tiny_synthetic):
    return market_items(os.path.join(tiny_synthetic, "query"))[0][0]


def run(trained, gallery, query, out, *extra):
    return search.main(["--checkpoint", trained, "--gallery", str(gallery), "--query", str(query), "--top", "5",
                        "--out", str(out), *extra])


def file_hashes(*roots):
    """{path: SHA-256 of its bytes, or where a symbolic link points} of every file under ``roots`` (folders or
    files): to check that a search left every file it did not write as it was."""
    found = {}
    for root in map(str, roots):
        walked = os.walk(root) if os.path.isdir(root) else [(os.path.dirname(root), [], [os.path.basename(root)])]
        for directory, _, names in walked:
            for name in names:
                path = os.path.join(directory, name)
                found[path] = (f"link to {os.readlink(path)}" if os.path.islink(path)
                               else hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest())
    return found


def read_results(out):
    with open(out / "results.csv", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def index_counts(out, capsys):
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.startswith("Gallery index:"))
    return line, text


def test_first_search_indexes_everything_and_ranks_the_known_match_first(trained, gallery, query, tmp_path,
                                                                         capsys):
    out = tmp_path / "out"
    assert run(trained, gallery, query, out) == 0
    line, text = index_counts(out, capsys)
    assert "13 images (0 reused, 13 embedded, 0 no longer there); 1 other files skipped" in line
    assert "1 gallery files could not be read" in text and "damaged.jpg" in text
    assert "damaged.jpg" in (out / "unreadable.txt").read_text()
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4, 5]
    known_match = os.path.join("cam9", os.path.basename(query).split("_")[0] + "_c9s1_000000_00.png")
    assert rows[0]["match"].endswith(known_match)
    assert rows[0]["same_identity"] == "true" and float(rows[0]["distance"]) < 0.05
    distances = [float(row["distance"]) for row in rows]
    assert distances == sorted(distances)
    assert {row["same_identity"] for row in rows} <= {"true", "false"}
    figures = os.listdir(out / "ranks")
    assert len(figures) == 1 and figures[0].endswith(".png")
    with Image.open(out / "ranks" / figures[0]) as figure:
        assert figure.width > figure.height > 100


def test_a_second_search_reuses_the_index_and_updates_only_what_changed(trained, gallery, query, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(trained, gallery, query, out) == 0
    capsys.readouterr()
    first = np.load(out / "index.npz", allow_pickle=False)["features"]
    assert run(trained, gallery, query, out) == 0
    assert "(13 reused, 0 embedded, 0 no longer there)" in index_counts(out, capsys)[0]
    np.testing.assert_array_equal(np.load(out / "index.npz", allow_pickle=False)["features"], first)

    changed = next((gallery / "day0").glob("*.jpg"))
    with Image.open(changed) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, format="JPEG")
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    next((gallery / "day2").glob("*.webp")).unlink()
    shutil.copy(changed, gallery / "day0" / "0099_c1s1_000001_00.jpg")
    assert run(trained, gallery, query, out) == 0
    assert "13 images (11 reused, 2 embedded, 1 no longer there)" in index_counts(out, capsys)[0]


def test_another_checkpoint_or_flip_embeds_everything_again(trained, gallery, query, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(trained, gallery, query, out) == 0
    capsys.readouterr()
    assert run(trained, gallery, query, out, "--flip") == 0
    line, text = index_counts(out, capsys)
    assert "(0 reused, 13 embedded" in line and "every image is embedded again" in text
    (out / "index.npz").write_bytes(b"garbage")
    assert run(trained, gallery, query, out, "--flip") == 0
    line, text = index_counts(out, capsys)
    assert "(0 reused, 13 embedded" in line and "rebuilt" in text


class PageChecker(html.parser.HTMLParser):
    """Collects image sources and links, and fails on a closing tag that does not match the open one."""

    def __init__(self):
        super().__init__()
        self.open, self.sources, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.sources.append(attributes["src"])
        if tag == "a":
            self.links.append(attributes["href"])
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"


def test_the_html_page_is_well_formed_and_its_images_exist(market_items, trained, gallery, tiny_synthetic, tmp_path,
                                                           capsys):
    queries = tmp_path / "people to find"
    queries.mkdir()
    for path, _, _ in market_items(os.path.join(tiny_synthetic, "query"))[:3]:
        shutil.copy(path, queries)
    out = tmp_path / "out"
    assert run(trained, gallery, queries, out) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    checker = PageChecker()
    checker.feed(page)
    checker.close()
    assert checker.open == []
    assert len(checker.sources) == 3 * (1 + 5) and len(checker.links) == 3
    for url in checker.sources + checker.links:
        assert not urllib.parse.urlparse(url).scheme, "relative links, so the page works offline"
        assert (out / urllib.parse.unquote(url)).is_file(), url
    assert page.count('class="same"') >= 1 and page.count('class="other"') >= 1
    assert len(os.listdir(out / "ranks")) == 3


def test_names_without_a_known_scheme_are_not_framed(market_items, trained, tiny_synthetic, tmp_path, capsys):
    crops = tmp_path / "crops"
    crops.mkdir()
    for number, (path, _, _) in enumerate(market_items(os.path.join(tiny_synthetic, "bounding_box_test"))[:3]):
        shutil.copy(path, crops / f"person {number}.jpg")
    out = tmp_path / "out"
    assert run(trained, crops, crops / "person 0.jpg", out) == 0
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2, "the query's own file is left out of its matches"
    assert {row["same_identity"] for row in rows} == {""}
    assert 'class="unknown"' in (out / "index.html").read_text()


def test_identities_come_from_known_file_name_schemes():
    assert search.same_identity("q/0002_c1s1_000451_03.jpg", "g/0002_c3s2_000100_01.jpg") is True
    assert search.same_identity("0002_c1s1_000451_03.jpg", "0005_c1s1_000451_03.png") is False
    assert search.same_identity("0001_c2_f0046182.jpg", "0001_c5_f0001111.jpg") is True
    assert search.same_identity("0002_c1s1_000451_03.jpg", "0002_c2_f0046182.jpg") is None, "two schemes"
    assert search.same_identity("alice.jpg", "0002_c1s1_000451_03.jpg") is None


def test_bad_input_is_a_clear_error(trained, gallery, query, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no pictures here")
    damaged = tmp_path / "query.jpg"
    damaged.write_bytes(b"nothing")
    cases = [((trained, empty, query), "holds no image Pillow reads (1 other files)"),
             ((str(tmp_path / "absent.pth.tar"), gallery, query), "absent.pth.tar does not exist"),
             ((trained, gallery, damaged), "--query: Cannot read the image"),
             ((trained, gallery, tmp_path / "nobody.jpg"), "nobody.jpg (--query) does not exist"),
             ((trained, tmp_path / "nowhere", query), "nowhere (--gallery) does not exist")]
    for arguments, message in cases:
        assert run(*arguments, tmp_path / "out") == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error


def test_python_dash_m_runs_the_search(trained, tmp_path):
    result = subprocess.run([sys.executable, "-m", "reid.search", "--checkpoint", trained, "--gallery",
                             str(tmp_path / "nowhere"), "--query", "q.jpg", "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--gallery" in result.stderr


def test_out_is_a_new_or_empty_folder_or_an_earlier_searchs(market_items, trained, gallery, tiny_synthetic, tmp_path,
                                                           capsys):
    """A search writes into a new or empty --out, or an earlier search's (its manifest lists what that search
    wrote); it replaces and deletes listed files only, and refuses before writing anything otherwise."""
    queries = tmp_path / "queries"
    queries.mkdir()
    for path, _, _ in market_items(os.path.join(tiny_synthetic, "query"))[:2]:
        shutil.copy(path, queries)
    first, second = sorted(os.listdir(queries))
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "results.csv").write_text("my own results")
    (crowded / "unreadable.txt").write_text("my own list")
    before = file_hashes(tmp_path)
    assert run(trained, gallery, queries / first, crowded) == 2
    error = capsys.readouterr().err
    assert "crowded (--out) holds results.csv, unreadable.txt, and no search-manifest.json" in error
    assert "Choose a new or empty folder for --out, or the --out folder of an earlier search." in error
    assert file_hashes(tmp_path) == before

    out = tmp_path / "out"
    assert run(trained, gallery, queries, out) == 0
    stems = [os.path.splitext(name)[0] for name in (first, second)]
    assert sorted(os.listdir(out / "ranks")) == [f"0000_{stems[0]}.png", f"0001_{stems[1]}.png"]
    (out / "notes.txt").write_text("mine")
    assert run(trained, gallery, queries / first, out) == 0
    assert os.listdir(out / "ranks") == [f"0000_{stems[0]}.png"], "the earlier search's figure is deleted"
    assert (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()

    (out / "ranks" / f"0001_{stems[1]}.png").write_bytes(b"my own figure")
    before = file_hashes(tmp_path)
    assert run(trained, gallery, queries, out) == 2
    error = capsys.readouterr().err
    assert f"holds the output of an earlier search, and also ranks/0001_{stems[1]}.png, which that search did " \
           f"not write and this one would replace. Choose another --out folder" in error
    assert file_hashes(tmp_path) == before

    manifest = json.loads((out / "search-manifest.json").read_text())
    manifest["files"].append("notes.txt")
    (out / "search-manifest.json").write_text(json.dumps(manifest))
    (crowded / "search-manifest.json").write_text('{"written_by": "reid.search", "files": [')
    before = file_hashes(tmp_path)
    for folder in (out, crowded):
        assert run(trained, gallery, queries / first, folder) == 2
        error = capsys.readouterr().err
        assert "search-manifest.json that is damaged or was not written by reid.search" in error
    assert file_hashes(tmp_path) == before


def test_out_may_not_overlap_the_gallery_or_the_query_folder(trained, gallery, query, tmp_path, capsys):
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(query, queries)
    (tmp_path / "link").symlink_to(gallery)
    before = file_hashes(tmp_path)
    cases = [((gallery, query, gallery / "search"), "is the gallery folder"),
             ((gallery, query, gallery), "is the gallery folder"),
             ((gallery, query, tmp_path / "link" / "search"), "is the gallery folder"),
             ((gallery, queries, queries / "search"), "is the query folder"),
             ((gallery, query, tmp_path), "is inside --out")]
    for (gallery_folder, query_path, out), message in cases:
        assert run(trained, gallery_folder, query_path, out) == 2
        error = capsys.readouterr().err
        assert message in error and "Choose an --out folder" in error and "Traceback" not in error
    assert file_hashes(tmp_path) == before


def test_a_query_is_never_its_own_match(trained, gallery, query, tmp_path, capsys):
    """Neither the query's own file (also through a link) nor a copy with the same bytes is a match; a copy in
    another format (the PNG in cam9) is."""
    shutil.copy(query, gallery / "day0" / "copy.jpg")
    os.link(gallery / "day0" / "copy.jpg", gallery / "day1" / "hard link.jpg")
    (gallery / "day2" / "symbolic link.jpg").symlink_to(query)
    before = file_hashes(gallery, query, trained)
    for number, query_path in enumerate((query, gallery / "day0" / "copy.jpg")):
        out = tmp_path / f"out{number}"
        assert run(trained, gallery, query_path, out) == 0
        assert "3 gallery files were left out of their query's matches" in capsys.readouterr().out
        rows = read_results(out)
        assert len(rows) == 5
        assert not [row for row in rows if row["match"].endswith(("copy.jpg", "hard link.jpg", "symbolic link.jpg"))]
        assert rows[0]["match"].endswith(os.path.join("cam9", f"{os.path.basename(query)[:4]}_c9s1_000000_00.png"))
    assert file_hashes(gallery, query, trained) == before


def write_large_png(path, width, height):
    """A valid 1-bit grayscale PNG of width x height: small on disk, 3 bytes a pixel once decoded to RGB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = bytes(1 + (width + 7) // 8) * height
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pathlib.Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                   + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))
    return path


def test_images_that_decode_to_gigabytes_are_not_decoded(trained, gallery, query, tmp_path, capsys):
    """A 30,000 x 30,000 PNG of a few hundred KB would take 2.5 GiB decoded. Its header is checked before
    decoding (``reid.images.check_decoded_size``): in the gallery it is skipped and listed as unreadable; as a
    query it is refused with its size, before anything is written."""
    huge = write_large_png(gallery / "day0" / "huge.png", 30000, 30000)
    out = tmp_path / "out"
    before = file_hashes(tmp_path)
    assert run(trained, gallery, huge, out) == 2
    error = capsys.readouterr().err
    assert f"--query: The image {huge}" in error and "900,000,000 pixels" in error and "Traceback" not in error
    assert file_hashes(tmp_path) == before and not out.exists()
    assert run(trained, gallery, query, out) == 0
    text = capsys.readouterr().out
    assert "2 gallery files could not be read" in text and "day0/huge.png" in text
    skipped = dict(line.split("\t", 1) for line in (out / "unreadable.txt").read_text().splitlines())
    assert str(huge) in skipped["day0/huge.png"] and "900,000,000 pixels" in skipped["day0/huge.png"]


def test_names_that_are_not_utf8_are_shown_with_a_replacement_character(trained, gallery, query, tmp_path, capsys):
    """Such names are drawn and shown with U+FFFD, and the files are still read, linked and listed by their
    real names."""
    match = os.fsdecode(os.path.join(os.fsencode(gallery / "day0"), b"caf\xe9.jpg"))
    shutil.copy(next((gallery / "day1").glob("*.png")), match)
    named = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"qu\xe9ry.jpg"))
    shutil.copy(query, named)
    out = tmp_path / "out"
    assert run(trained, gallery, named, out, "--top", "20") == 0
    assert "14 images" in index_counts(out, capsys)[0]
    assert os.listdir(out / "ranks") == [os.fsdecode(b"0000_qu\xe9ry.png")]
    rows = read_results(out)
    assert {row["query"] for row in rows} == {named}
    assert os.path.join("day0", os.fsdecode(b"caf\xe9.jpg")) in {os.path.relpath(row["match"], gallery) for row in rows}
    page = (out / "index.html").read_bytes().decode("utf-8")
    assert "caf\ufffd.jpg" in page and "qu\ufffdry.jpg" in page
    checker = PageChecker()
    checker.feed(page)
    for url in checker.sources + checker.links:
        assert os.path.isfile(os.path.join(os.fsencode(out), urllib.parse.unquote_to_bytes(url))), url


def npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_a_damaged_or_inconsistent_index_is_rebuilt(trained, gallery, query, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(trained, gallery, query, out) == 0
    capsys.readouterr()
    index_path = out / "index.npz"
    with np.load(index_path, allow_pickle=False) as stored:
        arrays = dict(stored)
    features, content = arrays["features"], index_path.read_bytes()
    damaged = {"could not be read": content[:len(content) // 2],
               f"its features have 5 columns, the checkpoint's {features.shape[1]}":
                   npz_bytes(**{**arrays, "features": features[:, :5]}),
               "13 paths, 13 sizes, 13 times and 12 feature rows do not match":
                   npz_bytes(**{**arrays, "features": features[1:]}),
               "not a search index: ValueError": npz_bytes(**{**arrays, "paths": arrays["paths"].astype(object)})}
    before = file_hashes(gallery, query, trained)
    for problem, content in damaged.items():
        index_path.write_bytes(content)
        assert run(trained, gallery, query, out) == 0, problem
        line, text = index_counts(out, capsys)
        assert "13 images (0 reused, 13 embedded" in line and problem in text and "it is rebuilt" in text, problem
        assert "allow_pickle" not in text
    assert run(trained, gallery, query, out) == 0
    assert "13 images (13 reused, 0 embedded" in index_counts(out, capsys)[0]
    assert file_hashes(gallery, query, trained) == before
