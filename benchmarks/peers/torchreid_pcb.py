"""An independent check of the baseline: torchreid's PCB (``pcb_p6``) trained from scratch on the same split, input
size, epochs and batch as ``benchmarks.real_cuhk03``; prints one JSON line (rank1, mAP, train_seconds).

    .venv/bin/python -m benchmarks.peers.torchreid_pcb --data DIR --out logs/peer-torchreid
    .venv/bin/python -m benchmarks.peers.torchreid_pcb --data DIR --out /tmp/peer --max-ids 40 --epochs 1

torchreid is never a dependency of this project. On first use this script creates the peer's own virtual
environment (``--venv``, default ``benchmarks/peers/.venv-torchreid``) and installs torchreid and what it imports
into it, from PyPI (``PEER_PACKAGES``). A ``.pth`` file in that environment puts this interpreter's
site-packages (torch, torchvision, numpy, scipy, Pillow) on its path, so both sides run the same PyTorch.

The split is the project's own: ``-d custom --split parity`` with the benchmark's file-name rule, read by
``reid.datasets``. It is written to ``--out/split.json`` as ``(path, pid, camid)`` lists, which
``torchreid_pcb_train.py`` (run with the peer environment's Python) turns into a torchreid dataset. The
recipe's equivalents in torchreid: SGD with Nesterov momentum 0.9 and weight decay 5e-4 at ``--lr`` on every
layer, a cosine schedule over the epochs (stepped per epoch, no warm-up), cross-entropy with label smoothing 0.1
on each of the six stripes, random flips; evaluation without flip test, by torchreid's own code.
"""
import argparse
import json
import os
import subprocess
import sys
import sysconfig

from benchmarks import real_cuhk03
from reid import datasets

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VENV = os.path.join(HERE, ".venv-torchreid")
WORKER = os.path.join(HERE, "torchreid_pcb_train.py")
# torchreid declares no dependencies; these are what its modules import at load time (engine: tensorboard,
# datasets: gdown, utils: cv2). The versions are those checked with Python 3.11 and PyTorch 2.14.
PEER_PACKAGES = ["torchreid==0.2.5", "tensorboard==2.21.0", "gdown==6.5.1", "opencv-python-headless==5.1.0.95"]
RECIPE = real_cuhk03.RECIPES["cpu-real"]


def ensure_peer_environment(venv):
    """The Python of the peer's virtual environment, created and filled when it does not hold ``PEER_PACKAGES``
    yet (a stamp file, written last, records that it does)."""
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "dsp-peer-packages.txt")
    if os.path.isfile(stamp) and open(stamp).read().split() == PEER_PACKAGES:
        return python
    print(f"creating the peer environment {venv} (torchreid and what it imports, from PyPI)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site_packages, "dsp-shared-torch.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    with open(stamp, "w") as handle:
        handle.write("\n".join(PEER_PACKAGES) + "\n")
    return python


def limit_identities(dataset, max_ids):
    """``(train, query, gallery)`` of ``dataset``, kept to about ``max_ids`` identities (None: all): the lowest
    numbered half of them from the training split, the other half from the test split."""
    train, query, gallery = dataset.train, dataset.query, dataset.gallery
    if max_ids is None:
        return train, query, gallery
    test_ids = set(sorted({pid for _, pid, _ in query})[:max_ids // 2])
    train_ids = max_ids - len(test_ids)
    return ([item for item in train if item[1] < train_ids], [item for item in query if item[1] in test_ids],
            [item for item in gallery if item[1] in test_ids])


def write_split(dataset, max_ids, path):
    """Write the split as JSON lists of ``[absolute path, pid, camid]``; returns its identity and image counts."""
    splits = dict(zip(("train", "query", "gallery"), limit_identities(dataset, max_ids)))
    with open(path, "w") as handle:
        json.dump({name: [[os.path.abspath(image), pid, camid] for image, pid, camid in items]
                   for name, items in splits.items()}, handle)
    return {f"{name}_{what}": count for name, items in splits.items()
            for what, count in (("ids", len({pid for _, pid, _ in items})), ("images", len(items)))}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the folder of PPPP_II.jpg crops")
    parser.add_argument("--out", required=True, help="the peer's folder: split.json and torchreid's files")
    parser.add_argument("--epochs", type=int, default=RECIPE["--epochs"])
    parser.add_argument("-b", "--batch-size", type=int, default=RECIPE["-b"])
    parser.add_argument("--height", type=int, default=RECIPE["--height"])
    parser.add_argument("--width", type=int, default=RECIPE["--width"])
    parser.add_argument("--lr", type=float, default=RECIPE["--lr"])
    parser.add_argument("-j", "--workers", type=int, default=RECIPE["-j"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backbone", choices=("resnet50", "resnet18"), default="resnet50",
                        help="resnet50: torchreid's pcb_p6 as published; resnet18: its PCB class with the ResNet-18 "
                             "blocks, the backbone of the benchmark's rows (default: resnet50)")
    parser.add_argument("--max-ids", type=int, default=None,
                        help="keep about this many identities, half train and half test (a quick check)")
    parser.add_argument("--venv", default=DEFAULT_VENV,
                        help=f"the peer's virtual environment (default: {DEFAULT_VENV})")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.max_ids is not None and args.max_ids < 2:
        parser.error("--max-ids must be at least 2 (one training and one test identity)")
    rule = real_cuhk03.DATA_FLAGS
    dataset = datasets.create("custom", args.data, combine_trainval=True, verbose=False,
                              name_pattern=rule["--name-pattern"], camera_ranges=rule["--camera-ranges"],
                              split=rule["--split"])
    os.makedirs(args.out, exist_ok=True)
    split_path = os.path.join(args.out, "split.json")
    counts = write_split(dataset, args.max_ids, split_path)
    python = ensure_peer_environment(args.venv)
    command = [python, WORKER, "--split", split_path, "--out", os.path.join(args.out, "torchreid"),
               "--epochs", str(args.epochs), "-b", str(args.batch_size), "--height", str(args.height),
               "--width", str(args.width), "--lr", str(args.lr), "-j", str(args.workers), "--seed", str(args.seed),
               "--backbone", args.backbone]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"error: torchreid's run stopped with exit status {result.returncode} (its output is above).")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps({"peer": "torchreid PCB", **figures, "epochs": args.epochs, "batch_size": args.batch_size,
                      "height": args.height, "width": args.width, "lr": args.lr, "seed": args.seed, **counts}))


if __name__ == "__main__":
    main()
