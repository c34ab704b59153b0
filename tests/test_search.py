"""reid.search: builds, reuses and updates its gallery index, ranks a known match first, writes the rank lists,
results.csv and an HTML page whose images exist; skips what it cannot read; clear errors for bad input."""
import csv
import html.parser
import os
import shutil
import subprocess
import sys
import urllib.parse

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
    """The tiny test gallery spread over sub-folders as JPEG, PNG and WebP, plus a text file and a damaged JPEG;
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


def test_names_without_a_known_scheme_are_not_framed(trained, tmp_path, query, capsys):
    crops = tmp_path / "crops"
    crops.mkdir()
    for number in range(3):
        shutil.copy(query, crops / f"person {number}.jpg")
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
    cases = [((trained, empty, query), "holds no JPEG, PNG or WebP image (1 other files)"),
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
