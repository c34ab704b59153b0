"""Feature maps of one image: heatmaps over the image and the spatial correlation of the learned features.

    # the trained model's layer1/layer2 maps: <stem>_<layer>.npy, <stem>_<layer>.png, <stem>_<layer>_corr.png
    python single_images_features_3.py --checkpoint logs/market/model_best.pth.tar --image 0027_c1s4_033481_01.jpg
    # the paper's figure: baseline (ImageNet ResNet of the DSP model's depth, or --checkpoint) left, DSP right
    python single_images_features_3.py --image 0027_c1s4_033481_01.jpg --compare logs/market/model_best.pth.tar
    # the correlation figure of a map saved earlier, and an image converted to .npy
    python single_images_features_3.py --correlation feature_maps/0027_c1s4_033481_01_layer1.npy
    python single_images_features_3.py --to-npy 0027_c1s4_033481_01.jpg

The input is resized to --height x --width, by default the size the checkpoint was trained at (main.py
records it), else 384x128. Avg.Corr is the mean of the (h*w x h*w) Pearson correlation matrix between the
C-dim feature vectors of all positions; a constant position vector counts as uncorrelated with every other one.
"""
import argparse
import os
import sys

from reid import data, figures, images, maps, models
from reid.errors import UsageError


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--image", metavar="PATH",
                      help="image file (any format Pillow reads), or .npy (H x W x 3 or 3 x H x W; uint8, uint16 "
                           "over 0..65535, or float in [0, 1])")
    mode.add_argument("--correlation", metavar="FEATURE.npy", help="draw the correlation of a saved feature map")
    mode.add_argument("--to-npy", metavar="IMAGE", help="convert an image to an H x W x 3 uint8 .npy")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="training checkpoint (default: plain ResNet with ImageNet weights, or random ones)")
    parser.add_argument("--compare", metavar="CKPT2", help="DSP checkpoint drawn next to the baseline")
    parser.add_argument("-a", "--arch", default=None,
                        help="baseline architecture without --checkpoint (default: that of --compare, else "
                             "resnet50)")
    parser.add_argument("--layers", nargs="+", default=["layer1", "layer2"],
                        help=f"any of {', '.join(maps.LAYERS)} (dsaK: the DSA gates)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default feature_maps); for --to-npy a .npy path or a folder "
                             "(default: next to the image)")
    parser.add_argument("--height", type=int, default=None,
                        help="input height (default: the size the checkpoint was trained at, else 384)")
    parser.add_argument("--width", type=int, default=None,
                        help="input width (default: the size the checkpoint was trained at, else 128)")
    parser.add_argument("--dpi", type=int, default=figures.DPI, help="resolution of the figures")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.dpi < 10:
        parser.error(f"--dpi must be at least 10, got {args.dpi}")
    try:
        if args.image is None and (args.checkpoint or args.compare):
            raise UsageError("--checkpoint and --compare go with --image.")
        if args.to_npy:
            convert(args.to_npy, args.out)
        elif args.correlation:
            correlation(args.correlation, args.out or "feature_maps", args.dpi)
        else:
            extract(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: ran out of memory; lower --dpi, --height/--width, or choose fewer or deeper --layers.",
              file=sys.stderr)
        return 2
    return 0


def convert(image_path, out):
    stem = os.path.splitext(image_path)[0]
    if out is None:
        path = stem + ".npy"
    elif out.endswith(".npy"):
        path = out
    else:
        path = os.path.join(figures.output_folder(out), os.path.basename(stem) + ".npy")
    if os.path.abspath(path) == os.path.abspath(image_path):
        raise UsageError(f"--to-npy would overwrite its input {image_path}; pass --out with another path.")
    images.save_image_npy(image_path, path)
    print(f"wrote {figures.display_name(path)}")


def correlation(feature_path, out, dpi):
    feature_map = maps.load_feature_map(feature_path)
    maps.check_correlation_memory(feature_map.shape, f"the feature map {figures.display_name(feature_path)}",
                                  "this map has too many positions to draw here: save the map of a deeper layer, "
                                  "or of a smaller input (--height/--width), and draw that")
    matrix = maps.spatial_correlation(feature_map)
    stem = os.path.splitext(os.path.basename(feature_path))[0]
    path = os.path.join(figures.output_folder(out), f"{stem}_corr.png")
    channels, height, width = feature_map.shape
    figures.plot_correlation(matrix, path, f"{stem}: {channels} channels, {height}x{width} positions", dpi)
    print(f"{figures.correlation_title(matrix)}  ({figures.display_name(path)})")


def extract(args):
    original = images.load_image(args.image)
    if args.compare:
        dsp, dsp_saved = models.load_trained_model(args.compare)
        baseline_name, baseline, baseline_size = _baseline(args.checkpoint, args.arch, dsp.arch)
        named_models = [(f"baseline: {baseline_name}", baseline), (f"DSP: {checkpoint_name(args.compare)}", dsp)]
        sizes = [dsp_saved.input_size, baseline_size]
    else:
        baseline_name, baseline, baseline_size = _baseline(args.checkpoint, args.arch, "resnet50")
        named_models, sizes = [(baseline_name, baseline)], [baseline_size]
    for name, model in named_models:
        maps.check_layers(args.layers, model, name)
    height, width = data.input_size(args.height, args.width, sizes)
    if None in (args.height, args.width) and len({size for size in sizes if size is not None}) > 1:
        print(f"note: the two checkpoints were trained at different sizes; both get {height}x{width} "
              f"(--height/--width).", file=sys.stderr)
    maps.check_input_memory(height, width, count=len(named_models))
    image, batch = maps.prepare_image(original, height, width)
    layer_maps = [maps.extract_feature_maps(model, batch, args.layers) for _, model in named_models]
    for layer in args.layers:
        maps.check_correlation_memory(layer_maps[0][layer].shape, layer,
                                      f"lower --height/--width, or leave {layer} out of --layers (a deeper layer "
                                      f"has fewer positions)", count=len(named_models))
    folder = figures.output_folder(args.out or "feature_maps")
    stem = os.path.splitext(os.path.basename(args.image))[0]
    names = [name for name, _ in named_models]
    for layer in args.layers:
        if args.compare:
            _compare_layer(image, stem, layer, folder, names, [model_maps[layer] for model_maps in layer_maps],
                           args.dpi)
        else:
            _single_layer(image, stem, layer, folder, baseline_name, layer_maps[0][layer], args.dpi)
    print(f"files written to {figures.display_name(folder)} (input {height}x{width})")


def _single_layer(image, stem, layer, folder, model_name, feature_map, dpi):
    """The heatmap figure <stem>_<layer>.png, <stem>_<layer>_corr.png and <stem>_<layer>.npy, the figures first:
    a figure too large for --dpi stops the tool before the layer's files are written."""
    _, channels, height, width = feature_map.shape
    figures.plot_feature_map(image, feature_map[0], os.path.join(folder, f"{stem}_{layer}.png"),
                             f"{stem}: {layer} of {model_name} ({channels} channels)", dpi)
    matrix = maps.spatial_correlation(feature_map[0])
    figures.plot_correlation(matrix, os.path.join(folder, f"{stem}_{layer}_corr.png"),
                             f"{stem}: {layer} of {model_name}, {height}x{width} positions", dpi)
    maps.save_feature_map(os.path.join(folder, f"{stem}_{layer}.npy"), feature_map)
    print(f"{figures.correlation_title(matrix)}  ({layer})")


def _compare_layer(image, stem, layer, folder, names, feature_maps, dpi):
    """The side-by-side <stem>_<layer>_compare.png, then <stem>_<layer>_baseline.npy and <stem>_<layer>_dsp.npy."""
    models_maps = []
    for name, feature_map in zip(names, feature_maps):
        matrix = maps.spatial_correlation(feature_map[0])
        print(f"{figures.correlation_title(matrix)}  ({layer}, {name})")
        models_maps.append((name, feature_map[0], matrix))
    _, channels, height, width = feature_maps[0].shape
    figures.plot_comparison(image, models_maps, os.path.join(folder, f"{stem}_{layer}_compare.png"),
                            f"{stem}: {layer}, {height}x{width} positions (baseline left, DSP right)", dpi)
    for feature_map, tag in zip(feature_maps, ("baseline", "dsp")):
        maps.save_feature_map(os.path.join(folder, f"{stem}_{layer}_{tag}.npy"), feature_map)


def _baseline(checkpoint_path, arch, default_arch):
    """The left-hand model, its name and training size: a checkpoint (its own architecture wins over -a), or
    a plain ResNet of -a (default ``default_arch``: the --compare model's architecture, else resnet50)."""
    if checkpoint_path:
        model, saved = models.load_trained_model(checkpoint_path)
        if arch and arch != model.arch:
            print(f"note: -a {arch} ignored: {checkpoint_path} holds a {model.arch} model.", file=sys.stderr)
        return checkpoint_name(checkpoint_path), model, saved.input_size
    arch = arch or default_arch
    model, pretrained = maps.baseline_model(arch)
    if pretrained:
        return f"ImageNet {arch}", model, None
    print(f"note: ImageNet weights for {arch} are not in torchvision's cache; the baseline has random "
          f"weights.", file=sys.stderr)
    return f"untrained {arch} (random weights)", model, None


def checkpoint_name(path):
    """A checkpoint's file name with its folder to show, e.g. ``demo/model_best.pth.tar``."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return figures.display_name(f"{folder}/{os.path.basename(path)}" if folder else os.path.basename(path))


if __name__ == "__main__":
    sys.exit(main())
