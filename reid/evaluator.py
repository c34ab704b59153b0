"""Feature extraction -> distances -> CMC/mAP/mINP, the printed table and results.json."""
import json

import numpy as np
import torch
from tqdm import tqdm

from . import data, distributed, metrics, run_files
from .errors import UsageError


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
    for images, _, _, _ in tqdm(loader, desc="features", leave=False, disable=not show_progress,
                                dynamic_ncols=True):
        batch = embed_batch(model, images, device, config.flip_test, autocast_dtype, channels_last).to("cpu", dtype)
        if features is None:
            features = torch.empty(len(shard), batch.shape[1], dtype=dtype)
        features[filled:filled + len(batch)] = batch
        filled += len(batch)
    if features is None:
        features = torch.empty(0, 0, dtype=dtype)
    return distributed.gather_rows(features.to(device), len(items)).cpu() if world_size > 1 else features


def check_scorable(query, gallery, what):
    """UsageError unless some query of ``query`` has a gallery image of its identity from another camera (the
    protocol ignores same-camera matches): such a split gives no metric. ``what`` names the split."""
    cameras_of = {}
    for _, pid, camid in gallery:
        cameras_of.setdefault(pid, set()).add(camid)
    if any(cameras_of.get(pid, set()) - {camid} for _, pid, camid in query):
        return
    raise UsageError(f"The {what} cannot be scored: it has {len(query)} query and {len(gallery)} gallery images, "
                     f"and no query has an image of its identity from another camera in the gallery (same-camera "
                     f"matches are ignored by the protocol).")


def evaluate(model, query, gallery, config, device, autocast_dtype=None, channels_last=False, show_progress=True):
    """Rank ``gallery`` for every image of ``query`` (lists of (path, pid, camid)); return the metrics.

    The result holds ``distances`` (the (Q, G) matrix) only when ``config.visrank`` asks for rank lists.
    """
    query_features = extract_features(model, query, config, device, autocast_dtype, channels_last, show_progress)
    gallery_features = extract_features(model, gallery, config, device, autocast_dtype, channels_last,
                                        show_progress)
    q_pids, q_camids = labels(query)
    g_pids, g_camids = labels(gallery)
    return metrics.retrieval_metrics(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids,
                                     metric=config.metric, rerank=config.rerank,
                                     device=device if device.type == "cuda" else None,
                                     keep_distances=config.visrank > 0)


def labels(items):
    """(pids, camids) of (path, pid, camid) items as int64 numpy arrays."""
    pids = np.array([pid for _, pid, _ in items], dtype=np.int64)
    camids = np.array([camid for _, _, camid in items], dtype=np.int64)
    return pids, camids


def format_table(results):
    """The original's printed summary: mAP, then CMC top-1/5/10 for its three views (plus mINP)."""
    views = results["cmc_views"]
    lines = [f"Mean AP: {results['mAP']:.1%}   mINP: {results['mINP']:.1%}   "
             f"({results['num_valid_queries']} valid queries)",
             "CMC Scores{:>12}{:>12}{:>12}".format("allshots", "cuhk03", "market1501")]
    for k in (1, 5, 10):
        lines.append("  top-{:<4}{:>12.1%}{:>12.1%}{:>12.1%}".format(
            k, views["allshots"][k - 1], views["cuhk03"][k - 1], views["market1501"][k - 1]))
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
    return {"dataset": dataset, "arch": model_config.arch, "epochs": epochs,
            **{key: results[key] for key in HEADLINE_KEYS},
            "dsa": model_config.dsa, "deep_supervision": model_config.deep_supervision,
            "parts": model_config.parts, "feature": model_config.feature,
            "cmc_views": results["cmc_views"], "config": run_config}
