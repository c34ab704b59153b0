"""torchvision's ImageNet ResNet files as they really are, from --pretrained-path and from torchvision's cache.

torchvision's IMAGENET1K_V1 ResNet files (e.g. resnet50-0676ba61.pth) are plain state_dicts of its ResNet,
classifier ``fc.*`` included, saved before BatchNorm had ``num_batches_tracked`` buffers. The files here are
made the same way, in the legacy and in the zip format of ``torch.save``.
"""
import os
import zipfile
from collections import OrderedDict

import pytest
import torch
import torchvision

import main
from reid import checkpoint, datasets, models
from reid.errors import UsageError

# Backbone tensors a DSP model takes from the file: torchvision's whole state_dict (with the BatchNorm
# counters) less fc.weight and fc.bias. The counters, absent from the file, start at 0.
BACKBONE_TENSORS = {"resnet18": 120, "resnet50": 318}
COUNTERS = {"resnet18": 20, "resnet50": 53}


def imagenet_state(arch):
    """torchvision's ``arch`` state_dict as its published ImageNet files hold it: no num_batches_tracked."""
    torch.manual_seed(0)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    return OrderedDict((key, value) for key, value in state.items() if not key.endswith(".num_batches_tracked"))


def save(state, path, legacy):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert zipfile.is_zipfile(path) != legacy
    return str(path)


def cached_path(torch_home, arch):
    """Where torchvision keeps ``arch``'s IMAGENET1K_V1 file under ``$TORCH_HOME``, named as it names it."""
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    return os.path.join(torch_home, "hub", "checkpoints", os.path.basename(url))


def test_the_counts_follow_torchvision():
    for arch, count in BACKBONE_TENSORS.items():
        state = torchvision.models.get_model(arch, weights=None).state_dict()
        assert len(state) - len(["fc.weight", "fc.bias"]) == count
        assert sum(key.endswith(".num_batches_tracked") for key in state) == COUNTERS[arch]
        assert len(imagenet_state(arch)) == count + 2 - COUNTERS[arch]
    assert os.path.basename(cached_path("", "resnet50")) == "resnet50-0676ba61.pth"


def assert_backbone_holds(model, state):
    own = model.state_dict()
    assert torch.equal(own["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(own["stem.1.running_var"], state["bn1.running_var"])
    last = [key for key in state if key.startswith("layer4.")][-1]
    assert torch.equal(own[last], state[last])
    counters = [value for key, value in own.items() if key.endswith(".num_batches_tracked")
                and key.startswith(("stem.", "layer"))]
    assert counters and all(value.item() == 0 for value in counters)


@pytest.mark.parametrize("arch,legacy,source", [
    ("resnet18", True, "path"), ("resnet18", False, "path"), ("resnet18", True, "cache"),
    ("resnet18", False, "cache"), ("resnet50", True, "path"), ("resnet50", False, "cache")])
def test_imagenet_files_load(tmp_path, monkeypatch, capsys, arch, legacy, source):
    state = imagenet_state(arch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if source == "cache":
        path = save(state, cached_path(str(tmp_path / "torch"), arch), legacy)
        assert models.imagenet_weights_path(arch) == path
        model = models.create(arch, num_classes=5, pretrained=True)
    else:
        path = save(state, tmp_path / "weights.pth", legacy)
        model = models.create(arch, num_classes=5, pretrained_path=path)
    assert capsys.readouterr().out == f"ImageNet weights: {BACKBONE_TENSORS[arch]} backbone tensors from {path}\n"
    assert_backbone_holds(model, state)


def test_files_that_have_the_counters_and_a_data_parallel_prefix_load(tmp_path, capsys):
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = save(OrderedDict((f"module.{key}", value) for key, value in state.items()), tmp_path / "w.pth", False)
    models.create("resnet18", num_classes=5, pretrained_path=path)
    assert "ImageNet weights: 120 backbone tensors from" in capsys.readouterr().out


@pytest.mark.parametrize("change,message", [
    ("extra", r"1 tensors have no place in it \(e\.g\. head\.weight\)"),
    ("missing", r"1 backbone tensors are missing \(e\.g\. layer1\.0\.bn1\.running_mean\)"),
    ("other arch", r"do not fit the resnet18 backbone"),
])
def test_tensors_that_fit_nowhere_or_are_missing_are_reported(tmp_path, change, message):
    state = imagenet_state("resnet50" if change == "other arch" else "resnet18")
    if change == "extra":
        state["head.weight"] = torch.zeros(4)
    elif change == "missing":
        del state["layer1.0.bn1.running_mean"]
    path = save(state, tmp_path / "weights.pth", legacy=True)
    with pytest.raises(UsageError, match=message) as error:
        models.create("resnet18", num_classes=5, pretrained_path=path)
    assert path in str(error.value) and "-a/--arch" in str(error.value)


def train_argv(data_dir, logs_dir, *extra):
    """main.py's arguments for one short epoch of a pretrained resnet18 at 96x32 (the tiny set: 4 steps)."""
    return ["-d", "synthetic", "--data-dir", str(data_dir), "--logs-dir", str(logs_dir), "-a", "resnet18",
            "--height", "96", "--width", "32", "-b", "16", "-j", "0", "--features", "32", "--epochs", "1",
            "--combine-trainval", *extra]


def steps_taken(logs_dir):
    """num_batches_tracked of the first backbone BatchNorm in the saved model: the training steps it ran."""
    saved = checkpoint.read(str(logs_dir / "checkpoint.pth.tar"))
    return saved.model["stem.1.num_batches_tracked"].item(), saved


@pytest.mark.slow
@pytest.mark.parametrize("source", ["path", "cache"])
def test_training_starts_from_an_imagenet_file(tiny_synthetic, tmp_path, monkeypatch, capsys, source):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if source == "cache":
        path = save(imagenet_state("resnet18"), cached_path(str(tmp_path / "torch"), "resnet18"), legacy=True)
        argv = train_argv(tiny_synthetic, tmp_path / "logs")
    else:
        path = save(imagenet_state("resnet18"), tmp_path / "resnet18.pth", legacy=False)
        argv = train_argv(tiny_synthetic, tmp_path / "logs", "--pretrained-path", path)
    assert main.main(argv) == 0
    assert f"ImageNet weights: 120 backbone tensors from {path}\n" in capsys.readouterr().out
    steps, saved = steps_taken(tmp_path / "logs")
    train_images = len(datasets.create("synthetic", tiny_synthetic, combine_trainval=True, verbose=False).train)
    assert steps == train_images // 16 > 0, "the counters started at 0 and counted the epoch's full batches"
    assert saved.pretrained is True
