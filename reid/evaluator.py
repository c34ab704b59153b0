"""Feature extraction -> distances -> CMC/mAP/mINP, the printed table, results.json and per_query.csv."""
import csv
import hashlib
import json
import os

import numpy as np
import torch

from . import data, distributed, metrics, run_files
from .compare import RESULTS_FORMAT
from .errors import UsageError
from .progress import progress_bar


@torch.inference_mode()
def embed_batch(model, images, device, flip=False, autocast_dtype=None, channels_last=False):
    """Retrieval features of a (B, 3, H, W) uint8 batch already at the model's input size: (B, D) float32 on
    ``device``. With ``flip`` the feature of the mirrored image is averaged in. The evaluator and
    ``reid.FeatureExtractor`` both embed through here."""
    images = data.to_model_input(images, device, channels_last)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        features = model(images).float()
        if flip:
            features = (features + model(images.flip(3)).float()) / 2
    return features


@torch.inference_mode()
def extract_features(model, items, config, device, autocast_dtype=None, channels_last=False, show_progress=True):
    """Retrieval features of ``items`` ((path, pid, camid) lists) as a (N, D) CPU tensor, in their order.

    ``config`` is an ``EvalConfig``: input size, batch size, workers, flip test and ``eval_dtype`` (the features
    are kept in that precision as they come, so float16 halves the memory of a large gallery). Under torchrun
    each process extracts every ``world_size``-th image (with the main process's BatchNorm statistics) and the
    shards are gathered.
    """
    world_size = torch.distributed.get_world_size() if distributed.is_distributed() else 1
    rank = torch.distributed.get_rank() if distributed.is_distributed() else 0
    shard = items[rank::world_size]
    loader = data.test_loader(shard, config.height, config.width, config.batch_size, config.workers)
    distributed.broadcast_buffers(model)
    model.eval()
    dtype = getattr(torch, config.eval_dtype)
    features, filled = None, 0
    for images, _, _, _ in progress_bar(loader, desc="features", unit="batch", show=show_progress):
        batch = embed_batch(model, images, device, config.flip_test, autocast_dtype, channels_last).to("cpu", dtype)
        if features is None:
            features = torch.empty(len(shard), batch.shape[1], dtype=dtype)
        features[filled:filled + len(batch)] = batch
        filled += len(batch)
    if features is None:
        features = torch.empty(0, 0, dtype=dtype)
    return distributed.gather_rows(features.to(device), len(items)).cpu() if world_size > 1 else features


def check_scorable(query, gallery, what):
    """UsageError unless some query of ``query`` has a gallery image of its identity from another camera that is
    not the query image itself (the protocol ignores same-camera matches and self-matches, see
    ``find_self_matches``): such a split gives no metric. ``what`` names the split."""
    self_matches = set(zip(*(indices.tolist() for indices in find_self_matches(query, gallery))))
    entries_of = {}
    for index, (_, pid, camid) in enumerate(gallery):
        entries_of.setdefault(pid, []).append((index, camid))
    for query_index, (_, pid, camid) in enumerate(query):
        if any(other_camid != camid and (query_index, index) not in self_matches
               for index, other_camid in entries_of.get(pid, ())):
            return
    raise UsageError(f"The {what} cannot be scored: it has {len(query)} query and {len(gallery)} gallery images, "
                     f"and no query has an image of its identity from another camera in the gallery (same-camera "
                     f"matches, and gallery entries that are the query image itself, are ignored by the "
                     f"protocol).")


def find_self_matches(query, gallery):
    """(query indices, gallery indices), two int64 arrays: the pairs of a query and a gallery entry (lists of
    (path, pid, camid)) that are the same image: the same file, or files with the same bytes.

    Only the files whose size is also the size of a file on the other side are read (hashed), so a large
    gallery costs one ``stat`` per file. A file that cannot be read is a UsageError naming it.
    """
    query_paths = [path for path, _, _ in query]
    gallery_paths = [path for path, _, _ in gallery]
    sizes = {path: _file_size(path) for path in {*query_paths, *gallery_paths}}
    shared_sizes = {sizes[path] for path in query_paths} & {sizes[path] for path in gallery_paths}
    digests = {path: _file_digest(path) for path, size in sizes.items() if size in shared_sizes}
    gallery_of = {}
    for index, path in enumerate(gallery_paths):
        if path in digests:
            gallery_of.setdefault(digests[path], []).append(index)
    pairs = [(query_index, gallery_index) for query_index, path in enumerate(query_paths) if path in digests
             for gallery_index in gallery_of.get(digests[path], ())]
    return (np.array([query_index for query_index, _ in pairs], dtype=np.int64),
            np.array([gallery_index for _, gallery_index in pairs], dtype=np.int64))


def _file_size(path):
    try:
        return os.path.getsize(path)
    except OSError as error:
        raise UsageError(f"Cannot read the image {path}: {error.strerror or error}.") from None


def _file_digest(path):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).digest()
    except OSError as error:
        raise UsageError(f"Cannot read the image {path}: {error.strerror or error}.") from None


def evaluate(model, query, gallery, config, device, autocast_dtype=None, channels_last=False, show_progress=True):
    """Rank ``gallery`` for every image of ``query`` (lists of (path, pid, camid)); return the metrics
    (``metrics.retrieval_metrics``) and ``num_self_matches``, the number of (query, gallery entry) pairs left
    out because the entry is the query image itself (``find_self_matches``).

    The result holds ``distances`` (the (Q, G) matrix) only when ``config.visrank`` asks for rank lists.
    """
    self_matches = find_self_matches(query, gallery)
    query_features = extract_features(model, query, config, device, autocast_dtype, channels_last, show_progress)
    gallery_features = extract_features(model, gallery, config, device, autocast_dtype, channels_last,
                                        show_progress)
    q_pids, q_camids = labels(query)
    g_pids, g_camids = labels(gallery)
    results = metrics.retrieval_metrics(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids,
                                        metric=config.metric, rerank=config.rerank,
                                        device=device if device.type == "cuda" else None,
                                        keep_distances=config.visrank > 0, self_matches=self_matches)
    return {**results, "num_self_matches": len(self_matches[0])}


def labels(items):
    """(pids, camids) of (path, pid, camid) items as int64 numpy arrays."""
    pids = np.array([pid for _, pid, _ in items], dtype=np.int64)
    camids = np.array([camid for _, _, camid in items], dtype=np.int64)
    return pids, camids


def format_table(results):
    """The original's printed summary: mAP, then CMC top-1/5/10 for its three views (plus mINP); then, when
    there were any, the number of self-matches left out."""
    views = results["cmc_views"]
    lines = [f"Mean AP: {results['mAP']:.1%}   mINP: {results['mINP']:.1%}   "
             f"({results['num_valid_queries']} valid queries)",
             "CMC Scores{:>12}{:>12}{:>12}".format("allshots", "cuhk03", "market1501")]
    for k in (1, 5, 10):
        lines.append("  top-{:<4}{:>12.1%}{:>12.1%}{:>12.1%}".format(
            k, views["allshots"][k - 1], views["cuhk03"][k - 1], views["market1501"][k - 1]))
    num_self_matches = results.get("num_self_matches", 0)
    if num_self_matches:
        lines.append(f"Left out: {num_self_matches} gallery {'entry' if num_self_matches == 1 else 'entries'} "
                     f"that {'is' if num_self_matches == 1 else 'are'} the query image itself (the same file or "
                     f"the same bytes)")
    return "\n".join(lines)


HEADLINE_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries")


def write_results(path, record):
    """Write ``record`` (see ``results_record``) to ``path`` as JSON, atomically."""
    with run_files.replacing(path) as handle:
        json.dump(record, handle, indent=2, sort_keys=False)
        handle.write("\n")
    return record


def results_record(results, dataset, model_config, epochs, run_config):
    """``results.json``'s content: the headline metrics as fractions, the model's switches, the number of
    epochs the evaluated model was trained for and the run's settings (``RunConfig.to_dict()``)."""
    return {"format": RESULTS_FORMAT, "dataset": dataset, "arch": model_config.arch, "epochs": epochs,
            **{key: results[key] for key in HEADLINE_KEYS},
            "dsa": model_config.dsa, "deep_supervision": model_config.deep_supervision,
            "parts": model_config.parts, "feature": model_config.feature,
            "cmc_views": results["cmc_views"], "config": run_config}


PER_QUERY_COLUMNS = ("query", "pid", "camid", "ap", "first_match_rank", "inp")


def write_per_query(path, query_items, per_query, root):
    """Write each valid query's figures to the CSV ``path`` (``per_query.csv``), atomically.

    ``per_query`` is the results' entry of that name and ``query_items`` the (path, pid, camid) query list its
    ``query_index`` points into. A row is the query image's path (relative to the dataset folder ``root`` when
    it lies inside it, else absolute), its id and camera, AP, the 1-based rank of its first correct match and
    INP; AP and INP are written in full (``repr``), so reading them back gives the same floats.
    """
    root = os.path.abspath(root)
    with run_files.replacing(path, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PER_QUERY_COLUMNS)
        for index, ap, rank, inp in zip(per_query["query_index"], per_query["ap"], per_query["first_match_rank"],
                                        per_query["inp"]):
            image, pid, camid = query_items[index]
            writer.writerow([_path_under(image, root), int(pid), int(camid), repr(float(ap)), int(rank),
                             repr(float(inp))])


def _path_under(path, root):
    """``path`` relative to the absolute folder ``root`` when it lies inside it, else absolute."""
    path = os.path.abspath(path)
    try:
        inside = os.path.commonpath([path, root]) == root
    except ValueError:  # on different drives
        inside = False
    return os.path.relpath(path, root) if inside else path


def read_per_query(path):
    """A file written by ``write_per_query`` as a dict of numpy arrays, one per column: ``query`` (str), ``pid``,
    ``camid`` and ``first_match_rank`` (int64), ``ap`` and ``inp`` (float64). A UsageError names the file, and
    the line, when it cannot be read or is not such a file."""
    columns = {name: [] for name in PER_QUERY_COLUMNS}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(header) != PER_QUERY_COLUMNS:
                raise UsageError(f"{path}, line 1: expected the per-query header {','.join(PER_QUERY_COLUMNS)}, "
                                 f"got {','.join(header or [])!r}.")
            for row in reader:
                if row:
                    for name, value in zip(PER_QUERY_COLUMNS, _per_query_row(row, path, reader.line_num)):
                        columns[name].append(value)
    except OSError as error:
        raise UsageError(f"Cannot read the per-query file {path}: {error.strerror or error}.") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{path} is not a per-query CSV file ({error}).") from None
    dtypes = {"query": str, "pid": np.int64, "camid": np.int64, "ap": np.float64, "first_match_rank": np.int64,
              "inp": np.float64}
    return {name: np.array(values, dtype=dtypes[name]) for name, values in columns.items()}


def _per_query_row(row, path, line):
    """The values of one row of a per-query file; a UsageError naming the file and line when it is malformed."""
    problem = None
    if len(row) != len(PER_QUERY_COLUMNS):
        problem = f"{len(row)} fields instead of {len(PER_QUERY_COLUMNS)}"
    else:
        query, pid, camid, ap, rank, inp = row
        try:
            pid, camid, rank, ap, inp = int(pid), int(camid), int(rank), float(ap), float(inp)
        except ValueError:
            problem = "pid, camid and first_match_rank must be whole numbers, ap and inp numbers"
        else:
            if rank < 1 or not (0 <= ap <= 1 and 0 <= inp <= 1):
                problem = "first_match_rank must be at least 1, ap and inp between 0 and 1"
    if problem:
        raise UsageError(f"{path}, line {line}: not a per-query row ({problem}): {','.join(row)!r}. Expected "
                         f"{','.join(PER_QUERY_COLUMNS)}, as reid.evaluator.write_per_query writes them.")
    return query, pid, camid, ap, rank, inp
