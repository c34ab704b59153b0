"""Feature maps of one image: heatmaps over the image and the spatial correlation of the learned features.

    # the trained model's layer1/layer2 maps: <stem>_<layer>.npy, <stem>_<layer>.png, <stem>_<layer>_corr.png
    python single_images_features_3.py --checkpoint logs/market/model_best.pth.tar --image 0027_c1s4_033481_01.jpg
    # the paper's figure: baseline (ImageNet ResNet-50, or --checkpoint) next to DSP
    python single_images_features_3.py --image 0027_c1s4_033481_01.jpg --compare logs/market/model_best.pth.tar
    # the correlation figure of a map saved earlier, and an image converted to .npy
    python single_images_features_3.py --correlation feature_maps/0027_c1s4_033481_01_layer1.npy
    python single_images_features_3.py --to-npy 0027_c1s4_033481_01.jpg

Avg.Corr is the mean of the (h*w x h*w) Pearson correlation matrix between the C-dim feature vectors of all
positions; a constant position vector counts as uncorrelated with every other position.
"""
import argparse
import os
import sys

from reid import visualize
from reid.errors import UsageError


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--image", metavar="PATH",
                      help="image file, or .npy (H x W x 3 or 3 x H x W; uint8, or float in [0, 1] or [0, 255])")
    mode.add_argument("--correlation", metavar="FEATURE.npy", help="draw the correlation of a saved feature map")
    mode.add_argument("--to-npy", metavar="IMAGE", help="convert an image to an H x W x 3 uint8 .npy")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="training checkpoint (default: plain ResNet with ImageNet weights, or random ones)")
    parser.add_argument("--compare", metavar="CKPT2", help="DSP checkpoint drawn next to the baseline")
    parser.add_argument("-a", "--arch", default=None,
                        help="baseline architecture without --checkpoint (default resnet50)")
    parser.add_argument("--layers", nargs="+", default=["layer1", "layer2"],
                        help=f"any of {', '.join(visualize.LAYERS)} (dsaK: the DSA gates)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default feature_maps); for --to-npy a .npy path or a folder "
                             "(default: next to the image)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if args.image is None and (args.checkpoint or args.compare):
            raise UsageError("--checkpoint and --compare go with --image.")
        if args.to_npy:
            convert(args.to_npy, args.out)
        elif args.correlation:
            correlation(args.correlation, args.out or "feature_maps")
        else:
            extract(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def convert(image_path, out):
    stem = os.path.splitext(image_path)[0]
    if out is None:
        path = stem + ".npy"
    elif out.endswith(".npy"):
        path = out
    else:
        path = os.path.join(visualize.output_folder(out), os.path.basename(stem) + ".npy")
    if os.path.abspath(path) == os.path.abspath(image_path):
        raise UsageError(f"--to-npy would overwrite its input {image_path}; pass --out with another path.")
    visualize.save_image_npy(image_path, path)
    print(f"wrote {path}")


def correlation(feature_path, out):
    feature_map = visualize.load_feature_map(feature_path)
    matrix = visualize.spatial_correlation(feature_map)
    stem = os.path.splitext(os.path.basename(feature_path))[0]
    path = os.path.join(visualize.output_folder(out), f"{stem}_corr.png")
    channels, height, width = feature_map.shape
    visualize.plot_correlation(matrix, path, f"{stem}: {channels} channels, {height}x{width} positions")
    print(f"Avg.Corr : {visualize.average_correlation(matrix):.3f}  ({path})")


def extract(args):
    if args.height < 16 or args.width < 16:
        raise UsageError(f"--height/--width must be at least 16 pixels, got {args.height}x{args.width}.")
    image, batch = visualize.prepare_image(visualize.load_image(args.image), args.height, args.width)
    baseline_name, baseline = _baseline(args.checkpoint, args.arch)
    if args.compare:
        named_models = [(f"baseline: {baseline_name}", baseline),
                        (f"DSP: {os.path.basename(args.compare)}", visualize.load_trained_model(args.compare))]
    else:
        named_models = [(baseline_name, baseline)]
    for name, model in named_models:
        visualize.check_layers(args.layers, model, name)
    folder = visualize.output_folder(args.out or "feature_maps")
    stem = os.path.splitext(os.path.basename(args.image))[0]
    maps = [visualize.extract_feature_maps(model, batch, args.layers) for _, model in named_models]
    names = [name for name, _ in named_models]
    for layer in args.layers:
        if args.compare:
            _compare_layer(image, stem, layer, folder, names, [model_maps[layer] for model_maps in maps])
        else:
            _single_layer(image, stem, layer, folder, baseline_name, maps[0][layer])
    print(f"files written to {folder}")


def _single_layer(image, stem, layer, folder, model_name, feature_map):
    """<stem>_<layer>.npy, the heatmap figure <stem>_<layer>.png and <stem>_<layer>_corr.png."""
    visualize.save_feature_map(os.path.join(folder, f"{stem}_{layer}.npy"), feature_map)
    _, channels, height, width = feature_map.shape
    visualize.plot_feature_map(image, feature_map[0], os.path.join(folder, f"{stem}_{layer}.png"),
                               f"{stem}: {layer} of {model_name} ({channels} channels)")
    matrix = visualize.spatial_correlation(feature_map[0])
    visualize.plot_correlation(matrix, os.path.join(folder, f"{stem}_{layer}_corr.png"),
                               f"{stem}: {layer}, {height}x{width} positions")
    print(f"Avg.Corr : {visualize.average_correlation(matrix):.3f}  ({layer})")


def _compare_layer(image, stem, layer, folder, names, feature_maps):
    """<stem>_<layer>_baseline.npy, <stem>_<layer>_dsp.npy and the side-by-side <stem>_<layer>_compare.png."""
    rows = []
    for name, feature_map, tag in zip(names, feature_maps, ("baseline", "dsp")):
        visualize.save_feature_map(os.path.join(folder, f"{stem}_{layer}_{tag}.npy"), feature_map)
        matrix = visualize.spatial_correlation(feature_map[0])
        print(f"Avg.Corr : {visualize.average_correlation(matrix):.3f}  ({layer}, {name})")
        rows.append((name, feature_map[0], matrix))
    visualize.plot_comparison(image, rows, os.path.join(folder, f"{stem}_{layer}_compare.png"), f"{stem}: {layer}")


def _baseline(checkpoint_path, arch):
    """The left-hand model: a checkpoint (its own architecture wins over -a) or a plain ResNet."""
    if checkpoint_path:
        model = visualize.load_trained_model(checkpoint_path)
        if arch and arch != model.arch:
            print(f"note: -a {arch} ignored: {checkpoint_path} holds a {model.arch} model.", file=sys.stderr)
        return os.path.basename(checkpoint_path), model
    arch = arch or "resnet50"
    model, pretrained = visualize.baseline_model(arch)
    if not pretrained:
        print(f"note: ImageNet weights for {arch} are not in torchvision's cache; the baseline has random "
              f"weights.", file=sys.stderr)
    return f"{'ImageNet' if pretrained else 'random'} {arch}", model


if __name__ == "__main__":
    sys.exit(main())
