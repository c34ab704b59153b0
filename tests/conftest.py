"""Shared fixtures."""
import itertools
import os
import struct
import zlib

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reid import checkpoint, data, models
from reid.config import ModelConfig
from reid.datasets import synthetic
from reid.images import read_image

TINY_SYNTHETIC = dict(num_train_ids=8, num_test_ids=6, num_cameras=3, images_per_camera=3, height=64, width=32,
                      seed=0)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """Root of a tiny synthetic Market-1501-layout dataset (8 train ids, 6 test ids, 3 cameras, 64x32),
    generated once per session; load it with ``datasets.create('synthetic', root)``."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    synthetic.generate(root, **TINY_SYNTHETIC)
    return root


def _tiny_args(data_dir, logs_dir, *extra):
    return ["-d", "synthetic", "--data-dir", str(data_dir), "--logs-dir", str(logs_dir), "-a", "resnet18",
            "--no-pretrained", "--height", "96", "--width", "32", "-b", "16", "-j", "0", "--features", "32",
            "--lr", "0.05", "--eval-freq", "1", "--deterministic", *extra]


@pytest.fixture(scope="session")
def tiny_args():
    """``tiny_args(data_dir, logs_dir, *extra)``: main.py's arguments for a tiny deterministic CPU run
    (resnet18 at 96x32, batch 16, no workers, 32 features), then ``extra``."""
    return _tiny_args


@pytest.fixture(scope="session")
def gradient_image():
    """``gradient_image(height=24, width=12)``: a (3, H, W) uint8 image with a different colour at every pixel."""
    def make(height=24, width=12):
        rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        return torch.stack([rows * 10 % 256, columns * 20 % 256, (rows + columns) * 7 % 256]).to(torch.uint8)
    return make


@pytest.fixture(scope="session")
def write_image():
    """``write_image(path, mode="RGB", size=(16, 32))``: save a flat-coloured PIL image; returns the path."""
    def write(path, mode="RGB", size=(16, 32)):
        Image.new(mode, size, color=128 if mode in ("L", "1") else (10, 200, 30, 255)[: len(mode)]).save(path)
        return str(path)
    return write


TRAINED_INPUT_SIZE = (128, 64)  # layer4 is 8 rows high: the 6 stripes do not divide it, the harder case for export


def _market_items(folder):
    """``(path, pid, camid)`` of the Market-1501-named images (``0002_c1s1_000451_03.jpg``) in ``folder``."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(".jpg"))
    return [(os.path.join(folder, name), int(name.split("_")[0]), int(name.split("_")[1][1]) - 1)
            for name in names]


@pytest.fixture(scope="session")
def trained_input_size():
    """The (height, width) the ``trained`` checkpoint was trained at."""
    return TRAINED_INPUT_SIZE


@pytest.fixture(scope="session")
def market_items():
    """``market_items(folder)``: ``(path, pid, camid)`` of the Market-1501-named JPEGs in ``folder``, by name."""
    return _market_items


@pytest.fixture(scope="session")
def trained(tiny_synthetic, tmp_path_factory):
    """A resnet18 checkpoint at 128x64 (32 features) after two SGD steps on the tiny synthetic training split,
    so the DSA gates and BatchNorm statistics are no longer at their initial values. The loss is the identity
    cross-entropy of the mean part logits, which trains every layer the retrieval feature depends on."""
    items = _market_items(os.path.join(tiny_synthetic, "bounding_box_train"))
    labels = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    resize = data.build_transform(*TRAINED_INPUT_SIZE, train=False)
    batch = torch.stack([resize(read_image(image_path)) for image_path, _, _ in items])
    targets = torch.tensor([labels[pid] for _, pid, _ in items])
    config = ModelConfig(arch="resnet18", num_classes=len(labels), num_features=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.create(config.arch, config.num_classes, num_features=config.num_features).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in torch.randperm(len(items)).split(16)[:2]:
            logits = model.identity_logits(data.to_model_input(batch[step], torch.device("cpu")))
            optimizer.zero_grad()
            F.cross_entropy(logits, targets[step]).backward()
            optimizer.step()
    path = str(tmp_path_factory.mktemp("model") / "model_best.pth.tar")
    checkpoint.write(checkpoint.Checkpoint(model_config=config, model=model.state_dict(),
                                           input_size=TRAINED_INPUT_SIZE, epoch=1), path)
    return path


def _signal_after(monkeypatch, owner, name, calls, signum):
    """Wrap ``owner.name`` so that this process gets a real ``signum`` right after its ``calls``-th call.

    The handler under test (``trainer.StopRequest``) then runs exactly as for a signal from outside, at a
    known point: wrapping ``trainer.part_accuracy`` counts training steps, ``evaluator.evaluate`` evaluations.
    """
    real = getattr(owner, name)
    count = itertools.count(1)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        if next(count) == calls:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(owner, name, wrapped)


@pytest.fixture(scope="session")
def signal_after():
    return _signal_after


def _write_rgb48_png(path, pixels):
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), written from the PNG specification: Pillow
    cannot write this kind, which scanners and raw converters produce."""
    height, width, _ = pixels.shape
    scanlines = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def write_rgb48_png():
    return _write_rgb48_png
