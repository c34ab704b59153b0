"""Model factory: ``create('resnet50', num_classes=751, num_features=256, dropout=0.5)`` as in the original."""
import os

import torch
import torchvision

from ..errors import UsageError
from .attention import DSA
from .dsp import DSP, FEATURES

__all__ = ["DSA", "DSP", "FEATURES", "create", "names", "from_checkpoint", "imagenet_weights_path"]

_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"Pretrained weights file {path} does not exist (--pretrained-path).") from None
    except Exception as error:
        raise UsageError(
            f"Could not read pretrained weights from {path}: {error}. Expected a torchvision ResNet "
            f"state_dict saved with torch.save (it is loaded with weights_only=True).") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UsageError(f"Pretrained weights file {path} does not hold a state_dict.")
    return state


def load_backbone(model, state_dict, source):
    """Copy a torchvision ResNet state_dict (``conv1``, ``bn1``, ``layer1``.. keys) into the backbone."""
    renamed = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("conv1."):
            key = "stem.0." + key[len("conv1."):]
        elif key.startswith("bn1."):
            key = "stem.1." + key[len("bn1."):]
        if key.startswith(("stem.", "layer1.", "layer2.", "layer3.", "layer4.")):
            renamed[key] = value
    expected = {k: v for k, v in model.state_dict().items()
                if k.startswith(("stem.", "layer1.", "layer2.", "layer3.", "layer4."))}
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


def from_checkpoint(checkpoint, source):
    """Rebuild the model a training checkpoint (see ``reid.checkpoint``) was saved from."""
    try:
        arch, options, state = checkpoint["arch"], dict(checkpoint["model_options"]), checkpoint["model"]
    except (KeyError, TypeError):
        raise UsageError(f"{source} is not a checkpoint written by this project's main.py "
                         f"(it lacks the 'arch', 'model_options' or 'model' entries).") from None
    model = create(arch, **options)
    load_model_state(model, state, source)
    return model


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
