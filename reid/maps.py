"""What the feature tools compute: a model's intermediate maps, Grad-CAM and the maps' spatial correlation.

Feature maps are saved and read as float32 ``.npy`` files (never unpickled). The figures are in
``reid.figures``; the trained model comes from ``reid.models.load_trained_model``.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from . import data, images, models
from .errors import UsageError

LAYERS = ("layer1", "layer2", "layer3", "layer4", "dsa1", "dsa2", "dsa3")
CAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")
# Memory per input pixel of the forward pass that gives the feature maps, and of Grad-CAM's forward and backward
# passes (measured at 768x256: at most 512 and 4,366 bytes, ResNet-50 and ResNet-152), rounded up.
FORWARD_BYTES_PER_PIXEL = 1024
GRAD_CAM_BYTES_PER_PIXEL = 6144
# Memory per entry of a correlation matrix while it is computed and drawn: the float64 matrix and matplotlib's
# copies of it (measured on 2,304 and 4,096 positions: 82-84 bytes), rounded up.
CORRELATION_BYTES_PER_ENTRY = 96


def load_feature_map(path):
    """A feature map saved earlier, shape (1, C, h, w) or (C, h, w) -> float32 (C, h, w)."""
    array = images.load_npy(path, "feature map")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or 0 in array.shape:
        raise UsageError(f"The feature map {path} has shape {array.shape}; expected (1, C, h, w) or (C, h, w).")
    if array.dtype.kind not in "fiu":
        raise UsageError(f"The feature map {path} has dtype {array.dtype}; expected real numbers (float32).")
    if not np.isfinite(array).all():
        raise UsageError(f"The feature map {path} contains NaN or infinite values.")
    return array.astype(np.float32)


def save_feature_map(path, feature_map):
    """Write a float32 (1, C, h, w) map as ``.npy`` (the layout ``load_feature_map`` reads)."""
    try:
        np.save(path, np.asarray(feature_map, dtype=np.float32))
    except OSError as error:
        raise UsageError(f"Cannot write {path}: {error.strerror or error}.") from None


def prepare_image(image, height, width):
    """(3, H, W) uint8 -> (the resized image as (height, width, 3) uint8, the normalised (1, 3, h, w) batch)."""
    resized = TF.resize(image, [height, width], antialias=True)
    batch = data.to_model_input(resized.unsqueeze(0), "cpu")
    return resized.permute(1, 2, 0).numpy(), batch


def check_input_memory(height, width, grad_cam=False, count=1):
    """Refuse an input size whose forward pass (or Grad-CAM's, with ``grad_cam``) through ``count`` models would
    not fit in the memory available, before the image is resized."""
    per_pixel = GRAD_CAM_BYTES_PER_PIXEL if grad_cam else FORWARD_BYTES_PER_PIXEL
    images.require_memory(count * height * width * per_pixel,
                          f"{'Grad-CAM' if grad_cam else 'The forward pass'} at the input size {height}x{width}",
                          "lower --height/--width")


def check_correlation_memory(shape, what, advice, count=1):
    """Refuse, before computing them, ``count`` correlation matrices of maps of shape (..., h, w) and their figure
    when they would not fit in the memory available: (h*w)^2 entries each."""
    height, width = shape[-2:]
    positions = height * width
    images.require_memory(count * positions**2 * CORRELATION_BYTES_PER_ENTRY,
                          f"The correlation figure of {what} ({height}x{width} = {positions:,} positions, a "
                          f"{positions:,} x {positions:,} matrix)", advice)


def baseline_model(arch):
    """A plain ResNet baseline (no DSA, no deep supervision) in eval mode, and whether it is pretrained.

    ImageNet weights come from torchvision's cache when there; otherwise the weights stay random, drawn with
    seed 0 so that the baseline is the same on every call.
    """
    if arch not in models.names():
        raise UsageError(f"Unknown architecture {arch!r} (-a/--arch); choose one of: {', '.join(models.names())}.")
    pretrained = os.path.isfile(models.imagenet_weights_path(arch))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.create(arch, num_classes=1, pretrained=pretrained, dsa=False, deep_supervision=False)
    return model.eval(), pretrained


def available_layers(model):
    return [layer for layer in LAYERS if layer.startswith("layer") or model.options["dsa"]]


def check_layers(layers, model, name):
    """UsageError for a layer the model does not have, listing those it has."""
    valid = available_layers(model)
    for layer in layers:
        if layer in valid:
            continue
        if layer in LAYERS:
            raise UsageError(f"{layer} is a DSA gate, but {name} has no DSA blocks (a baseline or a --no-dsa "
                             f"run); choose from {', '.join(valid)}.")
        raise UsageError(f"Unknown layer {layer!r} (--layers); choose from {', '.join(valid)}.")


def extract_feature_maps(model, batch, layers):
    """{layer: float32 array (1, C, h, w)} for the requested layers (layer k<4 after its DSA block)."""
    maps = model.feature_maps(batch)
    return {layer: maps[layer].float().numpy() for layer in layers}


def check_cam_layer(layer):
    if layer not in CAM_LAYERS:
        raise UsageError(f"Grad-CAM works on {', '.join(CAM_LAYERS)} (--layer), not {layer!r}; the DSA gates "
                         f"are drawn next to it anyway.")


def grad_cam(model, batch, layer="layer4"):
    """Grad-CAM of the predicted identity on ``layer`` -> ((h, w) map in [0, 1], label index, probability).

    ``layer1``..``layer3`` are taken after their DSA block, as in ``feature_maps``.
    """
    check_cam_layer(layer)
    module = model.layer4 if layer == "layer4" else model.dsa[int(layer[-1]) - 1]
    captured = {}
    handle = module.register_forward_hook(lambda _module, _inputs, output: captured.update(map=output))
    try:
        with torch.enable_grad():
            scores = model.identity_logits(batch)
            label = int(scores[0].argmax())
            gradients, = torch.autograd.grad(scores[0, label], captured["map"])
    finally:
        handle.remove()
    activations = captured["map"].detach()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1))[0]
    probability = float(scores.detach().softmax(dim=1)[0, label])
    return normalise(cam.numpy()), label, probability


def normalise(values):
    """Min-max scale to [0, 1]; a flat map (e.g. a DSA gate still at its initial 1) becomes all zeros."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    if high - low <= 1e-6 * max(abs(high), abs(low), 1e-12):
        return np.zeros_like(values)
    return (values - low) / (high - low)


def activation_map(feature_map):
    """(C, h, w) -> (h, w) in [0, 1]: the channel mean of |map|, normalised."""
    return normalise(np.abs(np.asarray(feature_map, dtype=np.float64)).mean(axis=0))


def spatial_correlation(feature_map):
    """Pearson correlation between the C-dim feature vectors of all h*w positions: (h*w, h*w), row-major.

    A constant position vector has no defined correlation: it counts as 0 with every other position and
    1 with itself, so the matrix never holds NaN.
    """
    feature_map = np.asarray(feature_map, dtype=np.float64)
    channels, positions = feature_map.shape[0], feature_map[0].size
    images.require_memory(8 * (positions**2 + 4 * positions * channels),
                          f"The correlation matrix of a map of {positions:,} positions",
                          "use a map with fewer positions")
    vectors = feature_map.reshape(channels, -1).T
    constant = np.ptp(vectors, axis=1) == 0
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = np.where(constant[:, None], 0.0, centred / np.where(norms > 0, norms, 1.0))
    correlation = unit @ unit.T
    np.clip(correlation, -1.0, 1.0, out=correlation)
    np.fill_diagonal(correlation, 1.0)
    return correlation
