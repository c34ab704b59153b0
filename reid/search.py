"""Search a folder of person crops for the people in query images, with a trained checkpoint.

    python -m reid.search --checkpoint logs/demo/model_best.pth.tar --gallery data/synthetic/bounding_box_test \\
        --query data/synthetic/query --top 10 --out search

Every JPEG, PNG and WebP under the gallery folder (sub-folders included) is embedded once; the index is kept
in ``OUT/index.npz`` with each file's size and modification time and the checkpoint's fingerprint, so a later
search embeds only new or changed files. For each query the tool writes a rank-list figure in ``OUT/ranks/``
and its matches to ``OUT/results.csv``; ``OUT/index.html`` shows them all. When file names follow the
Market-1501, DukeMTMC-reID or CUHK03-NP scheme, matches of the query's identity are framed green, others red.
"""
import argparse
import csv
import functools
import hashlib
import html
import os
import pathlib
import sys
import urllib.parse
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from . import figures, metrics
from .datasets import cuhk03np, duke, market, parse_name
from .errors import UsageError
from .images import read_image
from .inference import FeatureExtractor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
INDEX_FILE = "index.npz"
KNOWN_SCHEMES = (market.PATTERN, duke.PATTERN, cuhk03np.PATTERN)


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
            if name.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(path):
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


def load_index(path):
    """The ``GalleryIndex`` saved at ``path``, or None with the reason when there is none that can be used."""
    if not os.path.isfile(path):
        return None, ""
    try:
        with np.load(path, allow_pickle=False) as stored:
            index = GalleryIndex(root=str(stored["root"]), fingerprint=str(stored["fingerprint"]),
                                 paths=stored["paths"].tolist(), sizes=stored["sizes"], mtimes=stored["mtimes"],
                                 features=stored["features"])
    except (OSError, ValueError, KeyError, EOFError) as error:
        return None, f"the index {path} could not be read ({error}); it is rebuilt"
    if not len(index.paths) == len(index.sizes) == len(index.mtimes) == len(index.features):
        return None, f"the index {path} is inconsistent; it is rebuilt"
    return index, ""


def save_index(index, path):
    """Write the index atomically (a temporary file renamed over ``path``)."""
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, root=np.array(index.root), fingerprint=np.array(index.fingerprint),
                     paths=np.array(index.paths, dtype=str), sizes=index.sizes, mtimes=index.mtimes,
                     features=index.features)
        os.replace(temporary, path)
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
        raise UsageError(f"The gallery folder {gallery} (--gallery) holds no JPEG, PNG or WebP image "
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
    (path, reason)."""
    rows = {}
    with tqdm(total=len(paths), desc="indexing", unit="img", disable=not show_progress or not paths,
              dynamic_ncols=True) as progress:
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
            raise UsageError(f"The query folder {query} (--query) holds no JPEG, PNG or WebP image ({skipped} "
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


def own_rows(index, query_paths):
    """For each query, the index row of its own file when the query is itself a gallery image, else None."""
    rows = {path: row for row, path in enumerate(index.paths)}
    root = os.path.realpath(index.root)
    return [rows.get(os.path.relpath(os.path.realpath(path), root)) for path in query_paths]


def rank(query_features, gallery_features, top, exclude=None, gallery_squared_norms=None):
    """For each query row, its ``top`` nearest gallery rows by Euclidean distance as ``[(row, distance), ...]``,
    nearest first (ties by row); ``exclude[i]``: a row left out of query i's list (or None).
    ``gallery_squared_norms``: ``GalleryIndex.squared_norms``, kept between queries."""
    distances = metrics.pairwise_distance(query_features, torch.as_tensor(gallery_features),
                                          gallery_squared_norms=gallery_squared_norms)
    exclude = exclude or [None] * len(distances)
    results = []
    for row_distances, left_out in zip(distances, exclude):
        order = torch.argsort(row_distances, stable=True)[:top + 1].tolist()
        results.append([(row, float(row_distances[row])) for row in order if row != left_out][:top])
    return results


def _caption(path, width=12):
    """The file name on at most two lines of ``width`` characters (middle elided), to fit over a thumbnail."""
    name = os.path.basename(path)
    if len(name) <= 2 * width:
        return "\n".join(name[start:start + width] for start in range(0, len(name), width))
    return f"{name[:width - 1]}…\n{name[-width:]}"


def ranked_images(index, gallery_label, query_path, ranked):
    """The matches of one query as ``figures.RankedImage``s, paths as the user wrote the gallery folder."""
    return [figures.RankedImage(os.path.join(gallery_label, index.paths[row]), _caption(index.paths[row]),
                                distance, same_identity(query_path, index.paths[row]))
            for row, distance in ranked]


def write_outputs(out, query_paths, matches_per_query, unreadable):
    """Rank-list PNGs in ``out/ranks``, ``out/results.csv``, ``out/index.html`` and, when some gallery files
    could not be read, ``out/unreadable.txt`` (path, tab, reason); returns the figure paths."""
    folder = figures.output_folder(os.path.join(out, "ranks"))
    figure_paths = []
    for number, (query_path, matches) in enumerate(zip(query_paths, matches_per_query)):
        stem = os.path.splitext(os.path.basename(query_path))[0]
        figure_paths.append(os.path.join(folder, f"{number:04d}_{stem}.png"))
        figures.plot_rank_list(query_path, f"query\n{_caption(query_path)}", matches, figure_paths[-1])
    try:
        with open(os.path.join(out, "results.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["query", "rank", "match", "distance", "same_identity"])
            for query_path, matches in zip(query_paths, matches_per_query):
                for position, match in enumerate(matches, start=1):
                    known = "" if match.same_identity is None else str(match.same_identity).lower()
                    writer.writerow([query_path, position, match.path, f"{match.distance:.6f}", known])
        with open(os.path.join(out, "index.html"), "w", encoding="utf-8") as handle:
            handle.write(html_page(out, query_paths, matches_per_query, figure_paths))
        _write_unreadable(os.path.join(out, "unreadable.txt"), unreadable)
    except OSError as error:
        raise UsageError(f"Cannot write the results into {out} (--out): {error.strerror or error}.") from None
    return figure_paths


def _link(out, path):
    """``path`` as a URL relative to the folder ``out``, so the page works offline and moves with its images."""
    try:
        url = urllib.parse.quote(os.path.relpath(os.path.abspath(path), os.path.abspath(out)).replace(os.sep, "/"))
    except ValueError:  # on another drive (Windows): an absolute file URL
        url = pathlib.Path(os.path.abspath(path)).as_uri()
    return html.escape(url, quote=True)


_STYLE = """body{font-family:sans-serif;margin:1.5em}section{margin-bottom:2em}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end}figure{margin:0;text-align:center;font-size:12px}
img{height:160px;border:4px solid #ddd}.query img{border-color:#333}.same img{border-color:limegreen}
.other img{border-color:red}figcaption{max-width:130px;overflow-wrap:anywhere}"""


def _figure(out, path, caption, css_class):
    return (f'<figure class="{css_class}"><img src="{_link(out, path)}" alt="{html.escape(os.path.basename(path))}">'
            f"<figcaption>{caption}</figcaption></figure>")


def html_page(out, query_paths, matches_per_query, figure_paths):
    """A self-contained page: per query, its image and top matches with rank and distance."""
    sections = []
    for query_path, matches, figure_path in zip(query_paths, matches_per_query, figure_paths):
        cells = [_figure(out, query_path, "query", "query")]
        for position, match in enumerate(matches, start=1):
            css_class = {True: "same", False: "other", None: "unknown"}[match.same_identity]
            caption = f"{position}. {html.escape(os.path.basename(match.path))}<br>{match.distance:.4f}"
            cells.append(_figure(out, match.path, caption, css_class))
        sections.append(f"<section><h2>{html.escape(query_path)}</h2>\n<div class=\"row\">{''.join(cells)}</div>\n"
                        f"<p><a href=\"{_link(out, figure_path)}\">rank-list figure</a></p></section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Gallery search</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n<h1>Gallery search: {len(query_paths)} queries</h1>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")


def search(checkpoint, gallery, query, out, top=10, batch_size=64, device=None, flip=False, show_progress=True):
    """Index ``gallery`` (reusing ``out``'s index), rank it for every query image, write the outputs.

    Returns ``(IndexUpdate, query paths, matches per query)``.
    """
    if top < 1 or batch_size < 1:
        raise UsageError(f"--top and --batch-size must be at least 1, got {top} and {batch_size}.")
    if not os.path.isdir(gallery):
        raise UsageError(f"The gallery folder {gallery} (--gallery) "
                         f"{'is not a folder' if os.path.exists(gallery) else 'does not exist'}.")
    extractor = FeatureExtractor(checkpoint, device=device, batch_size=batch_size, flip=flip)
    query_paths = query_files(query)
    try:
        query_features = extractor(query_paths)
    except UsageError as error:
        raise UsageError(f"--query: {error}") from None
    figures.output_folder(out)
    index_path = os.path.join(out, INDEX_FILE)
    previous, problem = load_index(index_path)
    index, update = update_index(extractor, gallery, previous, fingerprint(checkpoint, flip), show_progress)
    update.note = update.note or problem
    if not index.paths:
        raise UsageError(f"No image in the gallery folder {gallery} (--gallery) could be read; "
                         f"{len(update.unreadable)} files failed, e.g. {update.unreadable[0][1]}")
    save_index(index, index_path)
    ranked = rank(query_features, index.features, top, exclude=own_rows(index, query_paths),
                  gallery_squared_norms=index.squared_norms)
    matches = [ranked_images(index, gallery, path, rows) for path, rows in zip(query_paths, ranked)]
    write_outputs(out, query_paths, matches, update.unreadable)
    return update, query_paths, matches


def report(update, out, num_queries):
    """The lines printed after a search."""
    lines = [f"Gallery index: {update.reused + update.embedded} images ({update.reused} reused, {update.embedded} "
             f"embedded, {update.removed} no longer there); {update.skipped} other files skipped."]
    if update.note:
        lines.append(f"Note: {update.note}.")
    if update.unreadable:
        lines.append(f"{len(update.unreadable)} gallery files could not be read and were skipped "
                     f"(listed in {os.path.join(out, 'unreadable.txt')}):")
        lines += [f"  {path}" for path, _ in update.unreadable[:10]]
        if len(update.unreadable) > 10:
            lines.append("  ...")
    lines.append(f"{num_queries} queries ranked: {os.path.join(out, 'index.html')}, "
                 f"{os.path.join(out, 'results.csv')}, {os.path.join(out, 'ranks')}/")
    return lines


def _write_unreadable(path, unreadable):
    if unreadable:
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(f"{file}\t{reason}\n" for file, reason in unreadable)
    elif os.path.exists(path):
        os.remove(path)


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m reid.search",
                                     description="Rank the images of a folder for each query image.")
    parser.add_argument("--checkpoint", required=True, help="model_best.pth.tar or checkpoint.pth.tar of main.py")
    parser.add_argument("--gallery", required=True, metavar="DIR",
                        help="folder of person crops (JPEG/PNG/WebP, sub-folders included)")
    parser.add_argument("--query", required=True, metavar="IMG_OR_DIR", help="a query image or a folder of them")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="matches shown per query (default 10)")
    parser.add_argument("--out", required=True, metavar="OUT", help="folder for the index, figures and results")
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="images embedded at once (default 64)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--flip", action="store_true", help="average each feature with the mirror image's")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        update, query_paths, _ = search(args.checkpoint, args.gallery, args.query, args.out, args.top,
                                        args.batch_size, args.device, args.flip)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report(update, args.out, len(query_paths))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
