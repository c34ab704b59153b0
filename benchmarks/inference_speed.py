"""Feature extraction with reid.FeatureExtractor next to the evaluator's, and the gallery search's query latency;
prints one JSON object.

    .venv/bin/python -m benchmarks.inference_speed          # CPU: resnet50, 384x128, batch 32, 20,000-image index
    .venv/bin/python -m benchmarks.inference_speed -a resnet18 --height 128 --width 64 --images 64 --index-size 2000

Both extractors embed the same JPEG files (128x64 crops, the size of Market-1501's, written once into a temporary
folder) with the same randomly initialised model: "api" calls ``FeatureExtractor(...)(paths)``, "evaluator" calls
``reid.evaluator.extract_features`` (the path of ``main.py --evaluate``) with ``--workers`` loader processes. They
take turns for ``--rounds`` rounds after one untimed batch each, so a change in the machine's load affects both
alike; the median images/s of each is reported.

The search figures use a random index of ``--index-size`` rows of the model's feature size (12,288 for resnet50's
six 2048-d stripes: 0.98 GB at 20,000 rows). ``rank_seconds`` is the median time of ``reid.search.rank`` for one
query (distances to every row, top 10; the rows' squared norms are computed once beforehand, as a search does
for all its queries: ``index_norms_seconds``), ``embed_seconds`` that of embedding the one query image, and
``query_seconds`` their sum: the latency of a query once the index is in memory. ``index_load_seconds`` is the
time ``reid.search.load_index`` takes to read that index from disk (``--no-index-file`` skips writing it).
"""
import argparse
import json
import os
import resource
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import write_jpeg

from reid import FeatureExtractor, checkpoint, evaluator, metrics, models, search
from reid.config import EvalConfig, ModelConfig

CROP_SIZE = (128, 64)


def write_crops(folder, count, seed=0):
    """``count`` JPEG files of smooth random 128x64 pictures; returns their paths."""
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for number in range(count):
        coarse = torch.rand(1, 3, 8, 4, generator=generator)
        picture = F.interpolate(coarse, size=CROP_SIZE, mode="bilinear", align_corners=False)[0]
        path = os.path.join(folder, f"{number:05d}.jpg")
        write_jpeg((255 * picture).round().to(torch.uint8), path, quality=90)
        paths.append(path)
    return paths


def write_model(path, arch, height, width):
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, num_classes=751)
    model = models.create(config.arch, config.num_classes)
    checkpoint.write(checkpoint.Checkpoint(model_config=config, model=model.state_dict(), input_size=(height, width)),
                     path)
    return path


def seconds(function, *args, **kwargs):
    """(wall time of one call, its result)."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def extraction_rates(model_path, paths, args):
    """Median images/s of the API and of the evaluator, measured in turns."""
    extractor = FeatureExtractor(model_path, device="cpu", batch_size=args.batch_size)
    model = extractor.model
    config = EvalConfig(batch_size=args.batch_size, workers=args.workers, height=args.height, width=args.width)
    items = [(path, 0, 0) for path in paths]
    device = torch.device("cpu")
    extractor(paths[:args.batch_size])
    evaluator.extract_features(model, items[:args.batch_size], config, device, show_progress=False)
    api, reference = [], []
    for _ in range(args.rounds):
        api.append(len(paths) / seconds(extractor, paths)[0])
        reference.append(len(paths) / seconds(evaluator.extract_features, model, items, config, device,
                                              show_progress=False)[0])
    return extractor, statistics.median(api), statistics.median(reference)


def query_latency(extractor, query_path, args, folder):
    """Median seconds to embed one query and to rank a random index of ``--index-size`` rows for it."""
    feature_dim = extractor(query_path).shape[1]
    generator = np.random.default_rng(0)
    features = generator.standard_normal((args.index_size, feature_dim), dtype=np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    norms_time, norms = seconds(metrics.squared_norms, features)
    embed_times, rank_times = [], []
    for _ in range(args.queries):
        embed_time, query = seconds(extractor, query_path)
        rank_time, _ = seconds(search.rank, query, features, top=10, gallery_squared_norms=norms)
        embed_times.append(embed_time)
        rank_times.append(rank_time)
    figures = {"feature_dim": feature_dim, "index_mib": round(features.nbytes / 2**20),
               "index_norms_seconds": norms_time, "embed_seconds": statistics.median(embed_times),
               "rank_seconds": statistics.median(rank_times)}
    figures["query_seconds"] = figures["embed_seconds"] + figures["rank_seconds"]
    if not args.no_index_file:
        index = search.GalleryIndex(folder, "benchmark", [f"{row:05d}.jpg" for row in range(args.index_size)],
                                    np.zeros(args.index_size, np.int64), np.zeros(args.index_size, np.int64), features)
        index_path = os.path.join(folder, search.INDEX_FILE)
        search.save_index(index, index_path)
        figures["index_load_seconds"] = seconds(search.load_index, index_path)[0]
    return figures


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-a", "--arch", default="resnet50", choices=models.names())
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="images embedded per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="the evaluator's loader processes")
    parser.add_argument("--index-size", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=20, help="single-image queries timed")
    parser.add_argument("--no-index-file", action="store_true", help="do not time reading the index from disk")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_crops(folder, args.images)
        model_path = write_model(os.path.join(folder, "model.pth.tar"), args.arch, args.height, args.width)
        extractor, api_rate, evaluator_rate = extraction_rates(model_path, paths, args)
        latency = query_latency(extractor, paths[0], args, folder)
    result = {"arch": args.arch, "input_size": [args.height, args.width], "batch_size": args.batch_size,
              "images": args.images, "rounds": args.rounds, "workers": args.workers,
              "threads": torch.get_num_threads(), "api_images_per_second": api_rate,
              "evaluator_images_per_second": evaluator_rate, "api_over_evaluator": api_rate / evaluator_rate,
              "index_size": args.index_size, **latency,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
