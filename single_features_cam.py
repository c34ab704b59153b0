"""Class activation maps of the trained model's identity prediction, for one image or a folder.

    python single_features_cam.py --checkpoint logs/market/model_best.pth.tar --image 0027_c1s4_033481_01.jpg
    python single_features_cam.py --checkpoint logs/market/model_best.pth.tar --image query/ --layer layer3

Images are resized to --height x --width, by default the size the checkpoint was trained at (else 384x128).
One PNG per image, <stem>_cam.png: image | Grad-CAM of the predicted identity on --layer | the DSA gate maps
(dsa1..dsa3, channel mean of the fused gate) when the model has DSA. The identity is the training label index
(the mean of the part classifiers' logits), printed with its softmax probability.
"""
import argparse
import os
import sys

from reid import data, figures, images, maps, models
from reid.errors import UsageError

SKIPPED_NAMES_SHOWN = 3


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="CKPT", required=True, help="training checkpoint")
    parser.add_argument("--image", metavar="PATH", required=True,
                        help="image file (any format Pillow reads), .npy (H x W x 3 or 3 x H x W), or a folder "
                             "of them (files are recognised by their bytes, not their names)")
    parser.add_argument("--layer", default="layer4", help=f"Grad-CAM layer: {', '.join(maps.CAM_LAYERS)}")
    parser.add_argument("--out", metavar="DIR", default="cams", help="output folder")
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
        run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: ran out of memory; lower --dpi or --height/--width.", file=sys.stderr)
        return 2
    return 0


def run(args):
    maps.check_cam_layer(args.layer)
    paths = image_paths(args.image)
    model, saved = models.load_trained_model(args.checkpoint)
    height, width = data.input_size(args.height, args.width, [saved.input_size])
    maps.check_input_memory(height, width, grad_cam=True)
    figures.output_folder(args.out)
    gate_names = [layer for layer in maps.available_layers(model) if layer.startswith("dsa")]
    for path in paths:
        image, batch = maps.prepare_image(images.load_image(path), height, width)
        cam, label, probability = maps.grad_cam(model, batch, args.layer)
        gates = {name: maps.activation_map(gate[0])
                 for name, gate in maps.extract_feature_maps(model, batch, gate_names).items()}
        stem = os.path.splitext(os.path.basename(path))[0]
        figure_path = os.path.join(args.out, f"{stem}_cam.png")
        figures.plot_cam(image, cam, gates, figure_path,
                         f"{stem}\nidentity {label} (p = {probability:.3f}), Grad-CAM on {args.layer}", args.dpi)
        print(f"{figures.display_name(path)}: predicted identity {label} (training label index), probability "
              f"{probability:.3f} -> {figures.display_name(figure_path)}")


def image_paths(path):
    """The image itself, or the images in a folder, recognised by their bytes (a BMP named .jpg, a PNG without a
    suffix); the folder's other files are skipped with a note."""
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        found = [name for name in names if images.is_image_file(os.path.join(path, name))]
        if not found:
            raise UsageError(f"The folder {path} (--image) holds no image file (any format Pillow reads) and no "
                             f".npy array ({len(names)} other entries).")
        skipped = [figures.display_name(name) for name in sorted(set(names) - set(found))]
        if skipped:
            shown = ", ".join(skipped[:SKIPPED_NAMES_SHOWN]) + (", ..." if len(skipped) > SKIPPED_NAMES_SHOWN else "")
            print(f"note: skipped {len(skipped)} entries of {figures.display_name(path)} that are not images: "
                  f"{shown}", file=sys.stderr)
        return [os.path.join(path, name) for name in found]
    if not os.path.isfile(path):
        raise UsageError(f"--image {path} is neither an image file nor a folder.")
    return [path]


if __name__ == "__main__":
    sys.exit(main())
