"""Feature extraction -> distances -> CMC/mAP/mINP, the printed table and results.json."""
import json
import os

import torch
from tqdm import tqdm

from . import data, distributed, metrics


@torch.inference_mode()
def extract_features(model, items, args, device, autocast_dtype=None, show_progress=True):
    """Retrieval features of ``items`` as a (N, D) float32 CPU tensor, in the order of ``items``.

    Under torchrun each process extracts every ``world_size``-th image (with the main process's BatchNorm
    statistics) and the shards are gathered.
    With ``args.flip_test`` the feature of the mirrored image is averaged in.
    """
    world_size = torch.distributed.get_world_size() if distributed.is_distributed() else 1
    rank = torch.distributed.get_rank() if distributed.is_distributed() else 0
    loader = data.test_loader(items[rank::world_size], args)
    distributed.broadcast_buffers(model)
    model.eval()
    chunks = []
    for images, _, _, _ in tqdm(loader, desc="features", leave=False, disable=not show_progress,
                                dynamic_ncols=True):
        images = data.to_model_input(images, device, args.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            features = model(images).float()
            if args.flip_test:
                features = (features + model(images.flip(3)).float()) / 2
        chunks.append(features)
    features = torch.cat(chunks) if chunks else torch.empty(0, 0, device=device)
    return distributed.gather_rows(features, len(items)).cpu()


def evaluate(model, query, gallery, args, device, autocast_dtype=None, show_progress=True):
    """Rank ``gallery`` for every image of ``query`` (lists of (path, pid, camid)); return the metrics."""
    query_features = extract_features(model, query, args, device, autocast_dtype, show_progress)
    gallery_features = extract_features(model, gallery, args, device, autocast_dtype, show_progress)
    distance_device = device if device.type == "cuda" else None
    distances = metrics.pairwise_distance(query_features, gallery_features, metric=args.metric,
                                          device=distance_device)
    if args.rerank:
        distances = metrics.re_rank(
            distances,
            metrics.pairwise_distance(query_features, query_features, metric=args.metric, device=distance_device),
            metrics.pairwise_distance(gallery_features, gallery_features, metric=args.metric,
                                      device=distance_device))
    q_pids, q_camids = _labels(query)
    g_pids, g_camids = _labels(gallery)
    ranking = metrics.evaluate_rank(distances, q_pids, g_pids, q_camids, g_camids)
    views = metrics.cmc_views(distances, q_pids, g_pids, q_camids, g_camids, topk=10)
    return {"rank1": float(ranking["cmc"][0]), "rank5": float(ranking["cmc"][4]),
            "rank10": float(ranking["cmc"][9]), "mAP": float(ranking["mAP"]), "mINP": float(ranking["mINP"]),
            "num_valid_queries": int(ranking["num_valid_queries"]),
            "cmc_views": {name: [float(v) for v in cmc] for name, cmc in views.items()},
            "distances": distances}


def _labels(items):
    pids = torch.tensor([pid for _, pid, _ in items])
    camids = torch.tensor([camid for _, _, camid in items])
    return pids.numpy(), camids.numpy()


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


def write_results(path, results, args, model_options, epochs):
    """``results.json``: the headline metrics as fractions, the model's switches and the run's arguments.

    ``epochs`` is the number of epochs the evaluated model was trained for.
    """
    record = {"dataset": args.dataset, "arch": model_options["arch"], "epochs": epochs,
              **{key: results[key] for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries")},
              **{key: model_options[key] for key in ("dsa", "deep_supervision", "parts", "feature")},
              "cmc_views": results["cmc_views"], "args": vars(args)}
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(temporary, path)
    return record
