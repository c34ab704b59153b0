"""Model factory: ``create('resnet50', num_classes=751, num_features=256, dropout=0.5)`` as in the original."""
import os
from dataclasses import asdict

import torch
import torchvision

from .. import checkpoint
from ..errors import UsageError
from .attention import DSA
from .dsp import DSP, FEATURES

__all__ = ["DSA", "DSP", "FEATURES", "create", "names", "from_checkpoint", "load_trained_model",
           "imagenet_weights_path"]

_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_BACKBONE_PREFIXES = ("stem.", "layer1.", "layer2.", "layer3.", "layer4.")


def names():
    return list(_ARCHS)


def create(arch, num_classes, num_features=256, dropout=0.5, pretrained=False, pretrained_path=None, **options):
    """Build a DSP model. ``options``: ``dsa``, ``deep_supervision``, ``parts``, ``feature``.

    ImageNet weights for the backbone come from ``pretrained_path`` when given, else from torchvision's
    cache when ``pretrained`` is true; the new layers keep their own initialisation either way.
    """
    if arch not in _ARCHS:
        raise UsageError(f"Unknown architecture {arch!r} (-a/--arch); choose one of: {', '.join(_ARCHS)}.")
    model = DSP(arch, num_classes, num_features=num_features, dropout=dropout, **options)
    if pretrained_path is not None:
        load_backbone(model, _read_weights(pretrained_path), pretrained_path)
    elif pretrained:
        path = imagenet_weights_path(arch)
        if not os.path.isfile(path):
            raise UsageError(
                f"ImageNet weights for {arch} are not in torchvision's cache ({path}) and cannot be downloaded "
                f"from here. Put the file there (copy it from a machine with internet, where "
                f"`python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\"` "
                f"fetches it), or pass a local copy with --pretrained-path FILE, or train from scratch with "
                f"--no-pretrained.")
        load_backbone(model, _read_weights(path), path)
    return model


def imagenet_weights_path(arch):
    """Where torchvision keeps the IMAGENET1K_V1 weights of ``arch`` once downloaded."""
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _read_weights(path):
    """The ResNet state_dict in the file ``path``, loaded safely (``checkpoint.load_safely``); a dict wrapping
    it under "state_dict" or "model" is accepted."""
    state = checkpoint.load_safely(path, "pretrained weights file",
                                   "a torchvision ResNet state_dict saved with torch.save (--pretrained-path)")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise UsageError(f"The pretrained weights file {path} holds a {type(state).__name__} that is not a "
                         f"state_dict (names mapped to tensors); expected a torchvision ResNet state_dict saved "
                         f"with torch.save (--pretrained-path).")
    return state


def load_backbone(model, state_dict, source):
    """Copy a torchvision ResNet state_dict (``conv1``, ``bn1``, ``layer1``.. keys) into the backbone.

    torchvision's published ImageNet files predate BatchNorm's ``num_batches_tracked`` buffers; like
    ``load_state_dict`` for such files, a missing one starts at 0. Every other backbone tensor must be there
    with its shape; ImageNet's classifier (``fc.*``) is left out, and any other tensor, which fits nowhere,
    is reported. Prints how many backbone tensors were set.
    """
    renamed = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("conv1."):
            key = "stem.0." + key[len("conv1."):]
        elif key.startswith("bn1."):
            key = "stem.1." + key[len("bn1."):]
        if not key.startswith("fc."):
            renamed[key] = value
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(_BACKBONE_PREFIXES)}
    for key in set(expected) - set(renamed):
        if key.endswith(".num_batches_tracked"):
            renamed[key] = torch.zeros_like(expected[key])
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(renamed) if expected[k].shape != renamed[k].shape)
    if missing or unexpected or mismatched:
        if missing:
            problem = f"{len(missing)} backbone tensors are missing (e.g. {missing[0]})"
        elif unexpected:
            problem = f"{len(unexpected)} tensors have no place in it (e.g. {unexpected[0]})"
        else:
            problem = f"{len(mismatched)} tensors have other shapes (e.g. {mismatched[0]})"
        raise UsageError(f"The weights in {source} do not fit the {model.arch} backbone: {problem}. "
                         f"Pass the ImageNet weights of the same architecture as -a/--arch.")
    model.load_state_dict(renamed, strict=False)
    print(f"ImageNet weights: {len(expected)} backbone tensors from {source}")


def from_checkpoint(saved, source):
    """Rebuild the model a ``reid.checkpoint.Checkpoint`` was saved from, with its weights (on the CPU)."""
    model = create(**asdict(saved.model_config))
    load_model_state(model, saved.model, source)
    return model


def load_trained_model(path):
    """The model of the training checkpoint file ``path`` in eval mode, and the ``Checkpoint`` (for its
    ``input_size`` and ``model_config``): what the feature tools, the extractor and the exporter start from."""
    saved = checkpoint.read(path)
    return from_checkpoint(saved, path).eval(), saved


def load_model_state(model, state, source):
    """``load_state_dict`` with a one-paragraph error when the checkpoint is of another model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{len(mismatched)} tensors differ in shape (e.g. {k}: checkpoint "
                           f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})")
        if missing:
            details.append(f"{len(missing)} tensors are missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} are unexpected (e.g. {unexpected[0]})")
        raise UsageError(
            f"The checkpoint {source} does not fit the model being built ({model.arch}, "
            f"{model.options['num_classes']} classes, dsa={model.options['dsa']}, "
            f"deep_supervision={model.options['deep_supervision']}, parts={model.options['parts']}): "
            f"{'; '.join(details)}. Use the same -a/--arch, dataset and switches as the run that saved it.")
    model.load_state_dict(state)
