"""Train torchreid's PCB (``pcb_p6``, or its ResNet-18 form) from scratch on a split written by
``torchreid_pcb.py``, evaluate it with torchreid's own evaluation, and print one JSON line: rank1, mAP
(fractions), train_seconds.

Run by ``torchreid_pcb.py`` with the Python of the peer's own virtual environment. It imports torchreid and
never this project's code, so that the figures are torchreid's alone. torchreid's own output goes to standard
error; standard output holds only the JSON line.
"""
import argparse
import contextlib
import json
import sys
import time

import torch
import torchreid
from torchreid.reid.data import ImageDataManager, ImageDataset, register_image_dataset
from torchreid.reid.engine import ImageSoftmaxEngine
from torchreid.reid.models import build_model
from torchreid.reid.models.pcb import PCB, BasicBlock
from torchreid.reid.optim import build_lr_scheduler, build_optimizer
from torchreid.reid.utils import set_random_seed

DATASET = "dsp_parity_split"


def build_pcb(backbone, num_classes):
    """torchreid's PCB from scratch: ``pcb_p6`` itself for resnet50; for resnet18, torchreid's own ``PCB`` class
    with the ResNet-18 blocks and the rest of ``pcb_p6``'s settings (6 stripes, 256-d reductions, last stride 1)."""
    if backbone == "resnet50":
        return build_model("pcb_p6", num_classes=num_classes, loss="softmax", pretrained=False)
    return PCB(num_classes=num_classes, loss="softmax", block=BasicBlock, layers=[2, 2, 2, 2], last_stride=1,
               parts=6, reduced_dim=256, nonlinear="relu")


def split_dataset(split_file):
    """A torchreid image dataset class holding the ``(path, pid, camid)`` lists of ``split_file``."""
    with open(split_file) as handle:
        split = json.load(handle)
    train, query, gallery = ([tuple(item) for item in split[name]] for name in ("train", "query", "gallery"))

    class ParitySplit(ImageDataset):
        def __init__(self, root="", **kwargs):
            super().__init__(train, query, gallery, **kwargs)

    return ParitySplit


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="the split file (JSON) written by torchreid_pcb.py")
    parser.add_argument("--out", required=True, help="torchreid's working folder")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("-b", "--batch-size", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("-j", "--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backbone", choices=("resnet50", "resnet18"), default="resnet50")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    use_gpu = torch.cuda.is_available()
    register_image_dataset(DATASET, split_dataset(args.split))
    with contextlib.redirect_stdout(sys.stderr):
        set_random_seed(args.seed)
        manager = ImageDataManager(root=args.out, sources=DATASET, height=args.height, width=args.width,
                                   transforms=["random_flip"], use_gpu=use_gpu, batch_size_train=args.batch_size,
                                   batch_size_test=args.batch_size, workers=args.workers)
        model = build_pcb(args.backbone, manager.num_train_pids)
        model = model.cuda() if use_gpu else model
        optimizer = build_optimizer(model, optim="sgd", lr=args.lr, sgd_nesterov=True)
        scheduler = build_lr_scheduler(optimizer, lr_scheduler="cosine", max_epoch=args.epochs)
        engine = ImageSoftmaxEngine(manager, model, optimizer=optimizer, scheduler=scheduler, use_gpu=use_gpu,
                                    label_smooth=True)
        engine.max_epoch = args.epochs
        started = time.perf_counter()
        for engine.epoch in range(args.epochs):
            engine.train(print_freq=10)
        train_seconds = time.perf_counter() - started
        engine.set_model_mode("eval")
        loaders = manager.test_loader[DATASET]
        rank1, mean_ap = engine._evaluate(dataset_name=DATASET, query_loader=loaders["query"],
                                          gallery_loader=loaders["gallery"])
    print(json.dumps({"rank1": round(float(rank1), 4), "mAP": round(float(mean_ap), 4),
                      "train_seconds": round(train_seconds, 1),
                      "backbone": args.backbone, "torchreid": torchreid.__version__,
                      "device": "cuda" if use_gpu else "cpu"}))


if __name__ == "__main__":
    main()
