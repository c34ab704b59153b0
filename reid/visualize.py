"""Figures: training curves, feature maps and their spatial correlation, Grad-CAM, rank lists.

Matplotlib renders off-screen (Agg). ``.npy`` files are always read with ``allow_pickle=False``, so a file
holding pickled objects is refused instead of being unpickled (which could run code).
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from . import checkpoint, data, models  # noqa: E402
from .errors import UsageError  # noqa: E402

LAYERS = ("layer1", "layer2", "layer3", "layer4", "dsa1", "dsa2", "dsa3")
CAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")
DPI = 100


def plot_curves(history, path):
    """``curves.png``: loss per epoch, and rank-1 / mAP at the epochs that were evaluated."""
    epochs = [row["epoch"] for row in history]
    evaluated = [row for row in history if row.get("mAP") is not None]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_axis.plot(epochs, [row["loss"] for row in history], marker="o", markersize=3)
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="Loss")
    if evaluated:
        metric_axis.plot([r["epoch"] for r in evaluated], [100 * r["rank1"] for r in evaluated], marker="o",
                         label="rank-1")
        metric_axis.plot([r["epoch"] for r in evaluated], [100 * r["mAP"] for r in evaluated], marker="s",
                         label="mAP")
        metric_axis.legend()
    split = evaluated[-1].get("eval_split", "") if evaluated else ""
    metric_axis.set(xlabel="epoch", ylabel="%", title=f"Retrieval ({split})" if split else "Retrieval",
                    ylim=(0, 100))
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# Reading inputs -------------------------------------------------------------------------------------------

def _load_npy(path, what):
    """``np.load`` without pickle; every failure becomes a UsageError naming the file."""
    if not os.path.isfile(path):
        raise UsageError(f"The {what} {path} does not exist.")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UsageError(f"The {what} {path} holds pickled Python objects (an object array or not a "
                             f".npy file at all); it is refused because unpickling could run code. Save a "
                             f"plain numeric array with numpy.save.") from None
        raise UsageError(f"Cannot read the {what} {path}: {error}. Expected a .npy file written by "
                         f"numpy.save.") from None
    except (OSError, EOFError) as error:
        raise UsageError(f"Cannot read the {what} {path}: {str(error) or 'the file is empty or cut short'}. "
                         f"Expected a .npy file written by numpy.save.") from None
    except (MemoryError, OverflowError):
        raise UsageError(f"Cannot read the {what} {path}: its header claims an array too large for memory "
                         f"(a damaged file?). Expected a .npy file written by numpy.save.") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise UsageError(f"The {what} {path} is a .npz archive; pass one array saved with numpy.save (.npy).")
    return array


def load_image(path):
    """An image file (JPEG/PNG) or a ``.npy`` array -> (3, H, W) uint8 tensor."""
    if path.lower().endswith(".npy"):
        return image_from_array(_load_npy(path, "image"), path)
    if not os.path.isfile(path):
        raise UsageError(f"The image {path} does not exist (--image expects a JPEG/PNG file or a .npy array).")
    return data.read_image(path)


def image_from_array(array, source):
    """An H x W x 3 or 3 x H x W array -> (3, H, W) uint8 tensor.

    uint8 is taken as is; floats are read as [0, 1] when their maximum is at most 1, else as [0, 255].
    When both layouts fit (a 3 x H x 3 array) H x W x 3 wins, the layout ``--to-npy`` writes.
    """
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]) or 0 in array.shape:
        raise UsageError(f"The image array {source} has shape {array.shape}; expected H x W x 3 or 3 x H x W "
                         f"(an RGB image, as single_images_features_3.py --to-npy writes).")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise UsageError(f"The image array {source} has values outside [0, 255] (or NaN/inf); expected "
                             f"floats in [0, 1] or [0, 255].")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        pixels = np.rint(array.astype(np.float64) * scale).astype(np.uint8)
    else:
        raise UsageError(f"The image array {source} has dtype {array.dtype}; expected uint8, or float in "
                         f"[0, 1] or [0, 255].")
    if pixels.shape[-1] == 3:
        pixels = pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def save_image_npy(image_path, out_path):
    """Write an image as the H x W x 3 uint8 ``.npy`` that ``load_image`` reads back unchanged."""
    image = load_image(image_path)
    try:
        np.save(out_path, image.permute(1, 2, 0).numpy())
    except OSError as error:
        raise UsageError(f"Cannot write {out_path}: {error.strerror or error}.") from None


def load_feature_map(path):
    """A feature map saved earlier, shape (1, C, h, w) or (C, h, w) -> float32 (C, h, w)."""
    array = _load_npy(path, "feature map")
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


# Models ---------------------------------------------------------------------------------------------------

def load_trained_model(path):
    """The model a training checkpoint was saved from, in eval mode, and the (height, width) it was trained at.

    The size comes from the run's arguments saved in the checkpoint; it is None when they are not there.
    """
    state = checkpoint.load(path)
    return models.from_checkpoint(state, path).eval(), checkpoint.trained_input_size(state)


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


# Maps and correlation -------------------------------------------------------------------------------------

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
    vectors = feature_map.reshape(feature_map.shape[0], -1).T
    constant = np.ptp(vectors, axis=1) == 0
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = np.where(constant[:, None], 0.0, centred / np.where(norms > 0, norms, 1.0))
    correlation = unit @ unit.T
    np.clip(correlation, -1.0, 1.0, out=correlation)
    np.fill_diagonal(correlation, 1.0)
    return correlation


def average_correlation(correlation):
    """The mean of the whole correlation matrix, diagonal included (the papers' ``Avg.Corr``)."""
    return float(np.mean(correlation))


def correlation_title(correlation):
    """``Avg.Corr : 0.xxx``, the correlation figure's title and the line the tools print."""
    return f"Avg.Corr : {average_correlation(correlation):.3f}"


def heat_overlay(image, heatmap, alpha=0.5):
    """Upsample an (h, w) map in [0, 1] to the (H, W, 3) uint8 image and blend its jet colours over it."""
    height, width = image.shape[:2]
    upsampled = F.interpolate(torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None],
                              size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    colours = matplotlib.colormaps["jet"](upsampled.clamp(0, 1).numpy())[..., :3]
    return (1 - alpha) * image / 255.0 + alpha * colours


# Figures --------------------------------------------------------------------------------------------------

def output_folder(path):
    """Create the --out folder if needed and return it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UsageError(f"Cannot create the output folder {path} (--out): {error.strerror or error}.") from None
    return path


def _image_axis(axis, picture, title, **options):
    axis.imshow(picture, **options)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])


def _correlation_axis(figure, axis, correlation):
    shown = axis.imshow(correlation, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    axis.set_title(correlation_title(correlation), fontsize=10)
    axis.set_xlabel(f"position (of {correlation.shape[0]})", fontsize=8)
    axis.tick_params(labelsize=7)
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)


def _save(figure, path, dpi):
    try:
        figure.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    except OSError as error:
        raise UsageError(f"Cannot write the figure {path}: {error.strerror or error}.") from None
    finally:
        plt.close(figure)


def plot_feature_map(image, feature_map, path, title, dpi=DPI):
    """image | heatmap of the (C, h, w) map | heatmap over the image."""
    heatmap = activation_map(feature_map)
    figure, axes = plt.subplots(1, 3, figsize=(6, 1.9 * image.shape[0] / image.shape[1] + 1.0))
    _image_axis(axes[0], image, "image")
    _image_axis(axes[1], heatmap, f"mean |map| ({feature_map.shape[1]}x{feature_map.shape[2]})", cmap="jet",
                vmin=0, vmax=1)
    _image_axis(axes[2], heat_overlay(image, heatmap), "overlay")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path, dpi)


def plot_correlation(correlation, path, title=None, dpi=DPI):
    """The spatial correlation matrix, titled with its Avg.Corr."""
    figure, axis = plt.subplots(figsize=(6, 5.4))
    _correlation_axis(figure, axis, correlation)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path, dpi)


def plot_comparison(image, models_maps, path, title, dpi=DPI):
    """The models side by side, the first on the left: the image, then per model ``(name, feature_map,
    correlation)`` its heatmap over the image and its correlation matrix, under the model's name."""
    figure = plt.figure(figsize=(1.4 + 5.2 * len(models_maps), 4.6), layout="constrained")
    panels = figure.subfigures(1, 1 + len(models_maps), width_ratios=(1.4,) + (5.2,) * len(models_maps))
    _image_axis(panels[0].subplots(), image, "image")
    for panel, (name, feature_map, correlation) in zip(panels[1:], models_maps):
        overlay_axis, correlation_axis = panel.subplots(1, 2, width_ratios=(1, 3.3))
        _image_axis(overlay_axis, heat_overlay(image, activation_map(feature_map)), "mean |map|")
        _correlation_axis(panel, correlation_axis, correlation)
        panel.suptitle(name, fontsize=10)
    figure.suptitle(title, fontsize=11)
    _save(figure, path, dpi)


def plot_cam(image, cam, gates, path, title, dpi=DPI):
    """image | Grad-CAM overlay | one overlay per DSA gate map (``gates``: {name: (h, w) in [0, 1]})."""
    panels = [("image", image), ("Grad-CAM", heat_overlay(image, cam))]
    panels += [(f"{name} gate", heat_overlay(image, gate)) for name, gate in gates.items()]
    height = 1.9 * image.shape[0] / image.shape[1] + 1.3
    figure, axes = plt.subplots(1, len(panels), figsize=(2 * len(panels), height))
    for axis, (name, picture) in zip(axes, panels):
        _image_axis(axis, picture, name)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path, dpi)


# Rank lists -----------------------------------------------------------------------------------------------

def rank_list(distances, pid, camid, gallery_pids, gallery_camids, topk):
    """Indices of the ``topk`` nearest gallery entries, skipping same-id-same-camera ones (the protocol)."""
    order = np.argsort(distances, kind="stable")
    same_view = (gallery_pids[order] == pid) & (gallery_camids[order] == camid)
    return order[~same_view][:topk]


def save_rank_lists(distances, query, gallery, folder, topk, num_queries=20, seed=0):
    """One PNG per sampled query: the query and its top-``topk`` gallery matches.

    Green border: same identity; red: another identity; rank and distance under each. Cameras are shown
    1-based, as in the file names (``camid`` is 0-based). The queries are a fixed-seed sample of
    ``num_queries``. Returns the paths written.
    """
    if topk < 1:
        raise UsageError(f"--visrank must be at least 1 to draw rank lists, got {topk}.")
    distances = distances.detach().cpu().numpy() if torch.is_tensor(distances) else np.asarray(distances)
    if distances.shape != (len(query), len(gallery)):
        raise ValueError(f"distances has shape {distances.shape}, expected ({len(query)}, {len(gallery)})")
    os.makedirs(folder, exist_ok=True)
    gallery_pids = np.array([pid for _, pid, _ in gallery])
    gallery_camids = np.array([camid for _, _, camid in gallery])
    chosen = np.sort(np.random.default_rng(seed).choice(len(query), min(num_queries, len(query)), replace=False))
    paths = []
    for index in chosen:
        query_path, pid, camid = query[index]
        matches = rank_list(distances[index], pid, camid, gallery_pids, gallery_camids, topk)
        stem = os.path.splitext(os.path.basename(query_path))[0]
        path = os.path.join(folder, f"{index:05d}_{stem}.png")
        _plot_rank_list(query[index], [(gallery[g], distances[index, g]) for g in matches], path)
        paths.append(path)
    return paths


def _plot_rank_list(query, matches, path):
    figure, axes = plt.subplots(1, 1 + len(matches), figsize=(1.2 * (1 + len(matches)), 3.2), squeeze=False)
    query_path, query_pid, query_camid = query
    _image_axis(axes[0, 0], data.read_image(query_path).permute(1, 2, 0).numpy(),
                f"query\nid {query_pid} cam {query_camid + 1}")
    for rank, (axis, ((path_, pid, camid), distance)) in enumerate(zip(axes[0, 1:], matches), start=1):
        _image_axis(axis, data.read_image(path_).permute(1, 2, 0).numpy(), f"id {pid} cam {camid + 1}")
        axis.set_xlabel(f"rank {rank}\n{distance:.3f}", fontsize=8)
        for spine in axis.spines.values():
            spine.set_edgecolor("limegreen" if pid == query_pid else "red")
            spine.set_linewidth(4)
    figure.tight_layout()
    _save(figure, path, DPI)
