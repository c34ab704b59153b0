"""Figures, drawn with matplotlib's object API (no pyplot state, no backend switch): training curves,
rank lists, feature maps and their correlation, Grad-CAM."""
import os
from typing import NamedTuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from . import images
from .maps import activation_map
from .errors import UsageError

DPI = 100
# The largest side a figure may have, in pixels: what matplotlib's Agg renderer draws in every version this
# project supports (newer ones draw up to 2**23 - 1).
MAX_FIGURE_SIDE = 2**16 - 1
# Memory per pixel of a figure while it is drawn and saved: the RGBA canvas and the images resampled to their
# size on it (measured on this module's figures: 15-31 bytes per pixel of the whole figure), rounded up.
FIGURE_BYTES_PER_PIXEL = 32


def display_name(path):
    """``path`` (or text holding paths) as text to show in a figure or a message: bytes of a file name that are
    not UTF-8, which Python keeps as surrogate escapes and matplotlib cannot draw, become the replacement
    character U+FFFD, as ``ls`` shows them. Open and write files with the path itself. Every title the figures
    here draw goes through it."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def plot_curves(history, path):
    """``curves.png``: loss per epoch, and rank-1 / mAP at the epochs that were evaluated."""
    epochs = [row["epoch"] for row in history]
    evaluated = [row for row in history if row.get("mAP") is not None]
    figure = Figure(figsize=(10, 3.6))
    loss_axis, metric_axis = figure.subplots(1, 2)
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


def output_folder(path):
    """Create the --out folder if needed and return it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UsageError(f"Cannot create the output folder {path} (--out): {error.strerror or error}.") from None
    return path


def _image_axis(axis, picture, title, **options):
    axis.imshow(picture, **options)
    axis.set_title(display_name(title), fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])


def _correlation_axis(figure, axis, correlation):
    shown = axis.imshow(correlation, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    axis.set_title(correlation_title(correlation), fontsize=10)
    axis.set_xlabel(f"position (of {correlation.shape[0]})", fontsize=8)
    axis.tick_params(labelsize=7)
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)


def check_figure_size(figure, path, dpi, advice="lower --dpi"):
    """Refuse, before it is drawn, a figure larger than ``MAX_FIGURE_SIDE`` a side at ``dpi`` or than the
    memory available can draw; ``advice`` says which flag to lower."""
    width, height = (int(round(side * dpi)) for side in figure.get_size_inches())
    if max(width, height) > MAX_FIGURE_SIDE:
        largest_dpi = int(MAX_FIGURE_SIDE / max(figure.get_size_inches()))
        raise UsageError(f"The figure {display_name(path)} would be {width:,}x{height:,} pixels at {dpi} dpi, more "
                         f"than the {MAX_FIGURE_SIDE:,} pixels a side a figure may have; {advice} (this figure "
                         f"allows at most {largest_dpi} dpi).")
    images.require_memory(width * height * FIGURE_BYTES_PER_PIXEL,
                          f"Drawing the figure {display_name(path)} ({width:,}x{height:,} pixels at {dpi} dpi)",
                          advice)


def _save(figure, path, dpi, advice="lower --dpi"):
    check_figure_size(figure, path, dpi, advice)
    try:
        figure.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    except OSError as error:
        raise UsageError(f"Cannot write the figure {path}: {error.strerror or error}.") from None


def plot_feature_map(image, feature_map, path, title, dpi=DPI):
    """image | heatmap of the (C, h, w) map | heatmap over the image."""
    heatmap = activation_map(feature_map)
    figure = Figure(figsize=(6, 1.9 * image.shape[0] / image.shape[1] + 1.0))
    axes = figure.subplots(1, 3)
    _image_axis(axes[0], image, "image")
    _image_axis(axes[1], heatmap, f"mean |map| ({feature_map.shape[1]}x{feature_map.shape[2]})", cmap="jet",
                vmin=0, vmax=1)
    _image_axis(axes[2], heat_overlay(image, heatmap), "overlay")
    figure.suptitle(display_name(title), fontsize=10)
    figure.tight_layout()
    _save(figure, path, dpi)


def plot_correlation(correlation, path, title=None, dpi=DPI):
    """The spatial correlation matrix, titled with its Avg.Corr."""
    figure = Figure(figsize=(6, 5.4))
    axis = figure.subplots()
    _correlation_axis(figure, axis, correlation)
    if title:
        figure.suptitle(display_name(title), fontsize=10)
    figure.tight_layout()
    _save(figure, path, dpi)


def plot_comparison(image, models_maps, path, title, dpi=DPI):
    """The models side by side, the first on the left: the image, then per model ``(name, feature_map,
    correlation)`` its heatmap over the image and its correlation matrix, under the model's name."""
    figure = Figure(figsize=(1.4 + 5.2 * len(models_maps), 4.6), layout="constrained")
    panels = figure.subfigures(1, 1 + len(models_maps), width_ratios=(1.4,) + (5.2,) * len(models_maps))
    _image_axis(panels[0].subplots(), image, "image")
    for panel, (name, feature_map, correlation) in zip(panels[1:], models_maps):
        overlay_axis, correlation_axis = panel.subplots(1, 2, width_ratios=(1, 3.3))
        _image_axis(overlay_axis, heat_overlay(image, activation_map(feature_map)), "mean |map|")
        _correlation_axis(panel, correlation_axis, correlation)
        panel.suptitle(display_name(name), fontsize=10)
    figure.suptitle(display_name(title), fontsize=11)
    _save(figure, path, dpi)


def plot_cam(image, cam, gates, path, title, dpi=DPI):
    """image | Grad-CAM overlay | one overlay per DSA gate map (``gates``: {name: (h, w) in [0, 1]})."""
    panels = [("image", image), ("Grad-CAM", heat_overlay(image, cam))]
    panels += [(f"{name} gate", heat_overlay(image, gate)) for name, gate in gates.items()]
    height = 1.9 * image.shape[0] / image.shape[1] + 1.3
    figure = Figure(figsize=(2 * len(panels), height))
    axes = figure.subplots(1, len(panels))
    for axis, (name, picture) in zip(axes, panels):
        _image_axis(axis, picture, name)
    figure.suptitle(display_name(title), fontsize=10)
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
        matches = []
        for row in rank_list(distances[index], pid, camid, gallery_pids, gallery_camids, topk):
            match_path, match_pid, match_camid = gallery[row]
            matches.append(RankedImage(match_path, f"id {match_pid} cam {match_camid + 1}", distances[index, row],
                                       match_pid == pid))
        stem = os.path.splitext(os.path.basename(query_path))[0]
        path = os.path.join(folder, f"{index:05d}_{stem}.png")
        plot_rank_list(query_path, f"query\nid {pid} cam {camid + 1}", matches, path)
        paths.append(path)
    return paths


class RankedImage(NamedTuple):
    """One match in a rank list: its image file, the caption over it, its distance to the query, and whether
    it shows the query's identity (True: green frame, False: red, None when unknown: no frame)."""

    path: str
    title: str
    distance: float
    same_identity: bool = None


def plot_rank_list(query_path, query_title, matches, path):
    """The query image, then its ``matches`` (``RankedImage``s, nearest first) with rank and distance under
    each, framed by identity where it is known; written to ``path``."""
    figure = Figure(figsize=(1.2 * (1 + len(matches)), 3.2))
    axes = figure.subplots(1, 1 + len(matches), squeeze=False)
    _image_axis(axes[0, 0], images.read_image(query_path).permute(1, 2, 0).numpy(), query_title)
    for rank, (axis, match) in enumerate(zip(axes[0, 1:], matches), start=1):
        _image_axis(axis, images.read_image(match.path).permute(1, 2, 0).numpy(), match.title)
        axis.set_xlabel(f"rank {rank}\n{match.distance:.3f}", fontsize=8)
        if match.same_identity is not None:
            for spine in axis.spines.values():
                spine.set_edgecolor("limegreen" if match.same_identity else "red")
                spine.set_linewidth(4)
    figure.tight_layout()
    _save(figure, path, DPI, advice="show fewer matches (--visrank, --top)")
