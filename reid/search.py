"""Search a folder of person crops for the people in query images, with a trained checkpoint.

    python -m reid.search --checkpoint logs/demo/model_best.pth.tar --gallery data/synthetic/bounding_box_test \\
        --query data/synthetic/query --top 10 --out search

Every image under the gallery folder (sub-folders included; any format Pillow decodes, by its extension:
JPEG, PNG, WebP, BMP, TIFF, ...) is embedded once; the index is kept in ``OUT/index.npz`` with each file's size
and modification time and the checkpoint's fingerprint, so a later search embeds only new or changed files. For
each query the tool writes a rank-list figure in ``OUT/ranks/`` and its matches to ``OUT/results.csv``;
``OUT/index.html`` shows them all. When file names follow the Market-1501, DukeMTMC-reID or CUHK03-NP scheme,
matches of the query's identity are framed green, others red.

``OUT`` is a new or empty folder, or the ``--out`` of an earlier search: ``OUT/search-manifest.json`` lists the
files a search wrote, and a search replaces or deletes no other file. ``OUT`` may not overlap the gallery or
the query folder, and a query is never its own match.
"""
import argparse
import contextlib
import csv
import filecmp
import functools
import hashlib
import html
import json
import os
import pathlib
import sys
import urllib.parse
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from . import figures, metrics, run_files
from .figures import display_name
from .datasets import cuhk03np, duke, market, parse_name
from .datasets.base import is_image_name
from .errors import UsageError
from .images import read_image
from .inference import FeatureExtractor
from .progress import progress_bar

INDEX_FILE = "index.npz"
MANIFEST_FILE = "search-manifest.json"
RANKS_FOLDER = "ranks"
# What a search writes into --out besides its manifest and the rank-list figures ranks/NNNN_<query>.png.
OUTPUT_FILES = (INDEX_FILE, "results.csv", "index.html", "unreadable.txt")
WRITTEN_BY = "reid.search"
KNOWN_SCHEMES = (market.PATTERN, duke.PATTERN, cuhk03np.PATTERN)
# What numpy's .npz reader (zipfile underneath) raises on a damaged or foreign file: the index is rebuilt.
_DAMAGED_INDEX_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, NotImplementedError, MemoryError,
                         OverflowError, zipfile.BadZipFile)
INDEX_ARRAYS = ("root", "fingerprint", "paths", "sizes", "mtimes", "features")


@dataclass
class GalleryIndex:
    """The embedded gallery: ``paths`` relative to ``root``, each file's ``sizes`` and ``mtimes`` (ns) when it
    was embedded, its ``features`` row, and the ``fingerprint`` of the model that embedded them."""

    root: str
    fingerprint: str
    paths: list
    sizes: np.ndarray
    mtimes: np.ndarray
    features: np.ndarray

    @functools.cached_property
    def squared_norms(self):
        """The rows' squared norms (``metrics.squared_norms``), computed once for all the queries it answers."""
        return metrics.squared_norms(self.features)


@dataclass
class IndexUpdate:
    """What bringing the index up to date did."""

    reused: int = 0
    embedded: int = 0
    removed: int = 0
    skipped: int = 0
    unreadable: list = None
    note: str = ""


def list_images(folder):
    """``(relative paths of the images under folder, sorted; number of other files skipped)``."""
    found, skipped = [], 0
    for directory, subfolders, names in os.walk(folder):
        subfolders.sort()
        for name in names:
            path = os.path.join(directory, name)
            if is_image_name(name) and os.path.isfile(path):
                found.append(os.path.relpath(path, folder))
            else:
                skipped += 1
    return sorted(found), skipped


def fingerprint(checkpoint_path, flip):
    """SHA-256 of the checkpoint file, and the flip setting: what the stored features depend on."""
    digest = hashlib.sha256()
    with open(checkpoint_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()} flip:{int(flip)}"


def load_index(path, feature_dim=None):
    """The ``GalleryIndex`` saved at ``path``, or None with the reason when there is none that can be used: the
    file cannot be read, or its arrays do not fit together (or have not ``feature_dim`` columns)."""
    if not os.path.isfile(path):
        return None, ""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in INDEX_ARRAYS}
    except _DAMAGED_INDEX_ERRORS as error:
        return None, (f"the index {display_name(path)} could not be read (it is damaged, cut short or not a "
                      f"search index: {type(error).__name__}); it is rebuilt")
    problem = _index_problem(arrays, feature_dim)
    if problem:
        return None, f"the index {display_name(path)} is inconsistent ({problem}); it is rebuilt"
    return GalleryIndex(arrays["root"].item(), arrays["fingerprint"].item(), arrays["paths"].tolist(),
                        arrays["sizes"].astype(np.int64), arrays["mtimes"].astype(np.int64),
                        arrays["features"].astype(np.float32)), ""


def _index_problem(arrays, feature_dim):
    """Why the arrays of a stored index cannot be used together, or "" when they can."""
    root, stored_fingerprint, paths, sizes, mtimes, features = (arrays[name] for name in INDEX_ARRAYS)
    if root.shape or stored_fingerprint.shape or root.dtype.kind != "U" or stored_fingerprint.dtype.kind != "U":
        return "its root or fingerprint is not a text"
    if paths.ndim != 1 or paths.dtype.kind != "U":
        return "its paths are not a list of texts"
    if sizes.ndim != 1 or mtimes.ndim != 1 or sizes.dtype.kind not in "iu" or mtimes.dtype.kind not in "iu":
        return "its file sizes or times are not lists of integers"
    if features.ndim != 2 or features.dtype.kind != "f":
        return f"its features are a {features.dtype} array of shape {features.shape}, not a table of numbers"
    if not len(paths) == len(sizes) == len(mtimes) == len(features):
        return (f"{len(paths)} paths, {len(sizes)} sizes, {len(mtimes)} times and {len(features)} feature rows "
                f"do not match")
    if feature_dim is not None and features.shape[1] != feature_dim:
        return f"its features have {features.shape[1]} columns, the checkpoint's {feature_dim}"
    if not np.isfinite(features).all():
        return "its features hold NaN or infinite values"
    return ""


def write_index(index, path):
    """Write the index as a .npz file (no pickle) at ``path``."""
    with open(path, "wb") as handle:
        np.savez(handle, root=np.array(index.root), fingerprint=np.array(index.fingerprint),
                 paths=np.array(index.paths, dtype=str), sizes=index.sizes, mtimes=index.mtimes,
                 features=index.features)


def save_index(index, path):
    """Write the index atomically (a temporary file renamed over ``path``)."""
    try:
        with run_files.replacing_path(path) as temporary:
            write_index(index, temporary)
    except OSError as error:
        raise UsageError(f"Cannot write the gallery index {path} (--out): {error.strerror or error}.") from None


def _stamps(root, paths, unreadable):
    """{path: (size, mtime in ns)} of the files that can still be looked at; the others go to ``unreadable``."""
    stamps = {}
    for path in paths:
        try:
            status = os.stat(os.path.join(root, path))
        except OSError as error:
            unreadable.append((path, f"Cannot read {path}: {error.strerror or error}"))
            continue
        stamps[path] = status.st_size, status.st_mtime_ns
    return stamps


def update_index(extractor, gallery, previous, model_fingerprint, show_progress=True):
    """The index of every image under ``gallery``, reusing ``previous`` rows whose file is unchanged.

    Files that cannot be decoded are left out and listed in the returned ``IndexUpdate``; never fatal.
    """
    root = os.path.abspath(gallery)
    paths, skipped = list_images(root)
    if not paths:
        raise UsageError(f"The gallery folder {gallery} (--gallery) holds no image Pillow reads "
                         f"({skipped} other files). Pass the folder of person crops to search.")
    update = IndexUpdate(skipped=skipped, unreadable=[])
    reusable = {}
    if previous is not None and previous.root == root and previous.fingerprint == model_fingerprint:
        reusable = {path: row for row, path in enumerate(previous.paths)}
    elif previous is not None:
        update.note = "the checkpoint, --flip or the gallery folder changed: every image is embedded again"
    stamps = _stamps(root, paths, update.unreadable)
    kept_rows, to_embed = {}, []
    for path in stamps:
        row = reusable.get(path)
        if row is not None and (int(previous.sizes[row]), int(previous.mtimes[row])) == stamps[path]:
            kept_rows[path] = previous.features[row]
        else:
            to_embed.append(path)
    update.reused = len(kept_rows)
    update.removed = len(set(reusable) - set(paths))
    new_rows = _embed_files(extractor, root, to_embed, update.unreadable, show_progress)
    update.embedded = len(new_rows)
    rows = {**kept_rows, **new_rows}
    ordered = [path for path in stamps if path in rows]
    features = np.stack([rows[path] for path in ordered]) if ordered else np.zeros((0, 0), np.float32)
    index = GalleryIndex(root, model_fingerprint, ordered, np.array([stamps[p][0] for p in ordered], np.int64),
                         np.array([stamps[p][1] for p in ordered], np.int64), features.astype(np.float32))
    return index, update


def _embed_files(extractor, root, paths, unreadable, show_progress):
    """{relative path: feature row} of the decodable files; the others are appended to ``unreadable`` as
    (path, reason). That includes an image whose header promises more pixels than can be decoded
    (``reid.images.check_decoded_size``): it is refused before it is decoded."""
    rows = {}
    with progress_bar(total=len(paths), desc="indexing", unit="img", show=show_progress and bool(paths)) as progress:
        for start in range(0, len(paths), extractor.batch_size):
            batch, pictures = [], []
            for path in paths[start:start + extractor.batch_size]:
                try:
                    pictures.append(read_image(os.path.join(root, path)))
                    batch.append(path)
                except UsageError as error:
                    unreadable.append((path, str(error)))
            if pictures:
                rows.update(zip(batch, extractor(pictures).numpy()))
            progress.update(len(paths[start:start + extractor.batch_size]))
    return rows


def query_files(query):
    """The query image paths: ``query`` itself, or every image under it when it is a folder."""
    if os.path.isdir(query):
        paths, skipped = list_images(query)
        if not paths:
            raise UsageError(f"The query folder {query} (--query) holds no image Pillow reads ({skipped} "
                             f"other files).")
        return [os.path.join(query, path) for path in paths]
    if not os.path.isfile(query):
        raise UsageError(f"The query {query} (--query) does not exist; pass an image file or a folder of them.")
    return [query]


def identity_of(path):
    """``(scheme number, person id)`` when the file name follows a known dataset scheme, else None.

    The schemes name JPEG/PNG files; a WebP copy with the same name stem counts as following them too.
    """
    as_jpeg = os.path.splitext(os.path.basename(path))[0] + ".jpg"
    for number, pattern in enumerate(KNOWN_SCHEMES):
        parsed = parse_name(as_jpeg, pattern)
        if parsed is not None:
            return number, parsed[0]
    return None


def same_identity(query_path, match_path):
    """True/False when both names follow the same known scheme, else None (unknown)."""
    query, match = identity_of(query_path), identity_of(match_path)
    if query is None or match is None or query[0] != match[0]:
        return None
    return query[1] == match[1]


def own_copies(index, query_paths):
    """For each query, the index rows of the gallery files that are the query itself: the same file (also
    through a link) or a copy with the same bytes. They are left out of its matches."""
    copies = []
    for path in query_paths:
        same_size = np.flatnonzero(index.sizes == os.path.getsize(path))
        copies.append({int(row) for row in same_size
                       if _same_bytes(path, os.path.join(index.root, index.paths[row]))})
    return copies


def _same_bytes(first, second):
    try:
        return filecmp.cmp(first, second, shallow=False)
    except OSError:
        return False


def rank(query_features, gallery_features, top, exclude=None, gallery_squared_norms=None):
    """For each query row, its ``top`` nearest gallery rows by Euclidean distance as ``[(row, distance), ...]``,
    nearest first (ties by row); ``exclude[i]``: the rows left out of query i's list (a set, possibly empty).
    ``gallery_squared_norms``: ``GalleryIndex.squared_norms``, kept between queries."""
    distances = metrics.pairwise_distance(query_features, torch.as_tensor(gallery_features),
                                          gallery_squared_norms=gallery_squared_norms)
    exclude = exclude or [set()] * len(distances)
    results = []
    for row_distances, left_out in zip(distances, exclude):
        order = torch.argsort(row_distances, stable=True)[:top + len(left_out)].tolist()
        results.append([(row, float(row_distances[row])) for row in order if row not in left_out][:top])
    return results


def _caption(path, width=12):
    """The file name on at most two lines of ``width`` characters (middle elided), to fit over a thumbnail."""
    name = display_name(os.path.basename(path))
    if len(name) <= 2 * width:
        return "\n".join(name[start:start + width] for start in range(0, len(name), width))
    return f"{name[:width - 1]}…\n{name[-width:]}"


def ranked_images(index, gallery_label, query_path, ranked):
    """The matches of one query as ``figures.RankedImage``s, paths as the user wrote the gallery folder."""
    return [figures.RankedImage(os.path.join(gallery_label, index.paths[row]), _caption(index.paths[row]),
                                distance, same_identity(query_path, index.paths[row]))
            for row, distance in ranked]


def figure_names(query_paths):
    """The rank-list figure of each query, relative to --out: ``ranks/NNNN_<query name>.png``."""
    return [f"{RANKS_FOLDER}/{number:04d}_{os.path.splitext(os.path.basename(path))[0]}.png"
            for number, path in enumerate(query_paths)]


def write_outputs(output, query_paths, matches_per_query, unreadable):
    """Into the ``OutputFolder`` ``output``: the rank-list PNGs, ``results.csv``, ``index.html`` and, when some
    gallery files could not be read, ``unreadable.txt`` (path, tab, reason). Paths keep their bytes in the two
    text files; figures and the page show names that are not UTF-8 with U+FFFD."""
    names = figure_names(query_paths)
    for query_path, matches, name in zip(query_paths, matches_per_query, names):
        with output.replacing(name) as temporary:
            figures.plot_rank_list(query_path, f"query\n{_caption(query_path)}", matches, temporary)
    with output.replacing("results.csv") as temporary, \
            open(temporary, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "rank", "match", "distance", "same_identity"])
        for query_path, matches in zip(query_paths, matches_per_query):
            for position, match in enumerate(matches, start=1):
                known = "" if match.same_identity is None else str(match.same_identity).lower()
                writer.writerow([query_path, position, match.path, f"{match.distance:.6f}", known])
    with output.replacing("index.html") as temporary, open(temporary, "w", encoding="utf-8") as handle:
        handle.write(html_page(output.path, query_paths, matches_per_query, [output.file(name) for name in names]))
    if unreadable:
        with output.replacing("unreadable.txt") as temporary, \
                open(temporary, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.writelines(f"{file}\t{reason}\n" for file, reason in unreadable)


def _link(out, path):
    """``path`` as a URL relative to the folder ``out``, so the page works offline and moves with its images;
    the bytes of a name that is not UTF-8 are percent-encoded as they are, so the link finds the file."""
    try:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(out)).replace(os.sep, "/")
        url = urllib.parse.quote(os.fsencode(relative))
    except ValueError:  # on another drive (Windows): an absolute file URL
        url = pathlib.Path(os.path.abspath(path)).as_uri()
    return html.escape(url, quote=True)


_STYLE = """body{font-family:sans-serif;margin:1.5em}section{margin-bottom:2em}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end}figure{margin:0;text-align:center;font-size:12px}
img{height:160px;border:4px solid #ddd}.query img{border-color:#333}.same img{border-color:limegreen}
.other img{border-color:red}figcaption{max-width:130px;overflow-wrap:anywhere}"""


def _figure(out, path, caption, css_class):
    alt = html.escape(display_name(os.path.basename(path)))
    return (f'<figure class="{css_class}"><img src="{_link(out, path)}" alt="{alt}">'
            f"<figcaption>{caption}</figcaption></figure>")


def html_page(out, query_paths, matches_per_query, figure_paths):
    """A self-contained page: per query, its image and top matches with rank and distance."""
    sections = []
    for query_path, matches, figure_path in zip(query_paths, matches_per_query, figure_paths):
        cells = [_figure(out, query_path, "query", "query")]
        for position, match in enumerate(matches, start=1):
            css_class = {True: "same", False: "other", None: "unknown"}[match.same_identity]
            name = html.escape(display_name(os.path.basename(match.path)))
            cells.append(_figure(out, match.path, f"{position}. {name}<br>{match.distance:.4f}", css_class))
        sections.append(f"<section><h2>{html.escape(display_name(query_path))}</h2>\n<div class=\"row\">"
                        f"{''.join(cells)}</div>\n<p><a href=\"{_link(out, figure_path)}\">rank-list figure</a></p>"
                        f"</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Gallery search</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n<h1>Gallery search: {len(query_paths)} queries</h1>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def check_apart(out, gallery, query):
    """Refuse an --out inside the gallery or the query folder, or one that holds them: the next search would
    take the rank-list figures written there for gallery or query images, and a search would replace or delete
    its own input. (An --out that is the query file itself is refused as not a folder.)"""
    out_path = os.path.realpath(out)
    for flag, path in (("--gallery", gallery), ("--query", query)):
        real = os.path.realpath(path)
        what = "gallery" if flag == "--gallery" else "query"
        if os.path.isdir(real) and _within(out_path, real):
            raise UsageError(f"--out {out} is the {what} folder {path} ({flag}) or inside it: the next search "
                             f"would take the rank-list figures written there for {what} images. Choose an --out "
                             f"folder outside {path}.")
        if real != out_path and _within(real, out_path):
            raise UsageError(f"The {what} {path} ({flag}) is inside --out {out}, the folder where the search "
                             f"writes and deletes its files. Choose an --out folder apart from it.")


def _within(path, folder):
    """True when the real path ``path`` is ``folder`` or inside it."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # on another drive (Windows)
        return False


class OutputFolder:
    """The --out folder of a search: new, empty, or the --out of an earlier search, whose manifest
    (``search-manifest.json``) lists the files that search wrote. A search writes new files and replaces or
    deletes listed ones, never another file."""

    def __init__(self, path):
        self.path = path
        self.listed = self._earlier_files()
        self.written = set()

    def file(self, name):
        return os.path.join(self.path, name)

    def _earlier_files(self):
        """The files the earlier search in this folder wrote (none for a new or empty folder), or a refusal."""
        if not os.path.lexists(self.path):
            return set()
        if not os.path.isdir(self.path):
            raise UsageError(f"--out {self.path} is not a folder. Pass a new or empty folder, or the --out folder "
                             f"of an earlier search.")
        try:
            entries = sorted(os.listdir(self.path))
        except OSError as error:
            raise UsageError(f"Cannot read the folder {self.path} (--out): {error.strerror or error}.") from None
        if not entries:
            return set()
        if MANIFEST_FILE not in entries:
            raise UsageError(f"The folder {self.path} (--out) holds {_some(entries)}, and no {MANIFEST_FILE}: it "
                             f"is not the output of an earlier search, and a search replaces and deletes files in "
                             f"its --out folder. Choose a new or empty folder for --out, or the --out folder of "
                             f"an earlier search.")
        listed = read_manifest(self.file(MANIFEST_FILE))
        if listed is None:
            raise UsageError(f"The folder {self.path} (--out) holds a {MANIFEST_FILE} that is damaged or was not "
                             f"written by reid.search, so which of its files a search wrote is not known. Choose "
                             f"a new or empty folder for --out.")
        return listed

    def claim(self, names):
        """Refuse when a file this search writes (``names``, relative) is there but not listed in the earlier
        search's manifest: replacing it would lose a file the search did not write."""
        foreign = [name for name in names if os.path.lexists(self.file(name)) and name not in self.listed]
        ranks = self.file(RANKS_FOLDER)
        if os.path.lexists(ranks) and (os.path.islink(ranks) or not os.path.isdir(ranks)):
            foreign.insert(0, RANKS_FOLDER)
        if foreign:
            raise UsageError(f"The folder {self.path} (--out) holds the output of an earlier search, and also "
                             f"{_some(foreign)}, which that search did not write and this one would replace. "
                             f"Choose another --out folder (a new or empty one), or move "
                             f"{'it' if len(foreign) == 1 else 'them'} out of {self.path} first.")

    def begin(self, names):
        """Create the folder and list ``names`` in its manifest before any of them is written, so that the next
        search recognises the folder also after this one stopped half-way."""
        try:
            os.makedirs(self.file(RANKS_FOLDER), exist_ok=True)
        except OSError as error:
            raise UsageError(f"Cannot create the output folder {self.path} (--out): "
                             f"{error.strerror or error}.") from None
        self._write_manifest(self.listed | set(names))

    @contextlib.contextmanager
    def replacing(self, name):
        """Write the file ``name`` through a temporary path (``run_files.replacing_path``); record it as
        written."""
        with run_files.replacing_path(self.file(name)) as temporary:
            yield temporary
        self.written.add(name)

    def finish(self):
        """Delete the earlier search's files that this one did not write again, and list this one's files."""
        kept = set()
        for name in sorted(self.listed - self.written):
            try:
                os.remove(self.file(name))
            except FileNotFoundError:
                pass
            except OSError:
                kept.add(name)
        self._write_manifest(self.written | kept)

    def _write_manifest(self, names):
        with run_files.replacing_path(self.file(MANIFEST_FILE)) as temporary, \
                open(temporary, "w", encoding="ascii") as handle:
            json.dump({"written_by": WRITTEN_BY, "files": sorted(names)}, handle, indent=1)
            handle.write("\n")


def read_manifest(path):
    """The file names listed in a search's manifest ``path``, or None when it is damaged or not a search's (a
    name that is not one a search writes counts as damage: only a search's own files are ever deleted)."""
    try:
        with open(path, encoding="ascii") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) and manifest.get("written_by") == WRITTEN_BY else None
    if not isinstance(files, list) or not all(isinstance(name, str) and _is_output_name(name) for name in files):
        return None
    return set(files)


def _is_output_name(name):
    """True for a name a search writes into --out: one of ``OUTPUT_FILES`` or ``ranks/<name>.png``."""
    folder, _, file_name = name.rpartition("/")
    return name in OUTPUT_FILES or (folder == RANKS_FOLDER and file_name.endswith(".png") and os.sep not in file_name)


def _some(names, shown=3):
    """A few of ``names`` for a message: ``a, b, c and 4 more``."""
    listed = ", ".join(display_name(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def search(checkpoint, gallery, query, out, top=10, batch_size=64, device=None, flip=False, show_progress=True):
    """Index ``gallery`` (reusing ``out``'s index), rank it for every query image, write the outputs.

    Everything that can be refused is checked before the first file is written. Returns ``(IndexUpdate, query
    paths, matches per query, left out)``: ``left out`` counts the gallery files left out of their query's
    matches for being the query itself or a copy of it.
    """
    if top < 1 or batch_size < 1:
        raise UsageError(f"--top and --batch-size must be at least 1, got {top} and {batch_size}.")
    if not os.path.isdir(gallery):
        raise UsageError(f"The gallery folder {gallery} (--gallery) "
                         f"{'is not a folder' if os.path.exists(gallery) else 'does not exist'}.")
    query_paths = query_files(query)
    check_apart(out, gallery, query)
    output = OutputFolder(out)
    names = [*OUTPUT_FILES, *figure_names(query_paths)]
    output.claim(names)
    extractor = FeatureExtractor(checkpoint, device=device, batch_size=batch_size, flip=flip)
    try:
        query_features = extractor(query_paths)
    except UsageError as error:
        raise UsageError(f"--query: {error}") from None
    previous, problem = None, ""
    if INDEX_FILE in output.listed:
        previous, problem = load_index(output.file(INDEX_FILE), query_features.shape[1])
    index, update = update_index(extractor, gallery, previous, fingerprint(checkpoint, flip), show_progress)
    update.note = update.note or problem
    if not index.paths:
        raise UsageError(f"No image in the gallery folder {gallery} (--gallery) could be read; "
                         f"{len(update.unreadable)} files failed, e.g. {update.unreadable[0][1]}")
    copies = own_copies(index, query_paths)
    ranked = rank(query_features, index.features, top, exclude=copies, gallery_squared_norms=index.squared_norms)
    matches = [ranked_images(index, gallery, path, rows) for path, rows in zip(query_paths, ranked)]
    output.begin(names)
    try:
        with output.replacing(INDEX_FILE) as temporary:
            write_index(index, temporary)
        write_outputs(output, query_paths, matches, update.unreadable)
        output.finish()
    except OSError as error:
        raise UsageError(f"Cannot write into the output folder {out} (--out): {error.strerror or error}.") from None
    return update, query_paths, matches, sum(map(len, copies))


def report(update, out, num_queries, left_out=0):
    """The lines printed after a search."""
    out = display_name(out)
    lines = [f"Gallery index: {update.reused + update.embedded} images ({update.reused} reused, {update.embedded} "
             f"embedded, {update.removed} no longer there); {update.skipped} other files skipped."]
    if update.note:
        lines.append(f"Note: {display_name(update.note)}.")
    if update.unreadable:
        lines.append(f"{len(update.unreadable)} gallery files could not be read and were skipped "
                     f"(listed in {os.path.join(out, 'unreadable.txt')}):")
        lines += [f"  {display_name(path)}" for path, _ in update.unreadable[:10]]
        if len(update.unreadable) > 10:
            lines.append("  ...")
    if left_out:
        lines.append(f"{left_out} gallery files were left out of their query's matches: the query itself, or a "
                     f"copy of it with the same bytes.")
    lines.append(f"{num_queries} queries ranked: {os.path.join(out, 'index.html')}, "
                 f"{os.path.join(out, 'results.csv')}, {os.path.join(out, RANKS_FOLDER)}/")
    return lines


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m reid.search",
                                     description="Rank the images of a folder for each query image.")
    parser.add_argument("--checkpoint", required=True, help="model_best.pth.tar or checkpoint.pth.tar of main.py")
    parser.add_argument("--gallery", required=True, metavar="DIR",
                        help="folder of person crops (any format Pillow reads, sub-folders included)")
    parser.add_argument("--query", required=True, metavar="IMG_OR_DIR", help="a query image or a folder of them")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="matches shown per query (default 10)")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="folder for the index, figures and results: a new or empty one, or an earlier "
                             "search's --out")
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="images embedded at once (default 64)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--flip", action="store_true", help="average each feature with the mirror image's")
    return parser


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # paths with bytes that are not UTF-8
    args = get_args_parser().parse_args(argv)
    try:
        update, query_paths, _, left_out = search(args.checkpoint, args.gallery, args.query, args.out, args.top,
                                                  args.batch_size, args.device, args.flip)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report(update, args.out, len(query_paths), left_out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
