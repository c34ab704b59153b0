"""The two visualisation CLIs, called through their ``main(argv)`` with tiny resnet18 models at 96x32."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import write_png

import single_features_cam
import single_images_features_3
from reid import checkpoint, images, models

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = ["--height", "96", "--width", "32"]


def write_checkpoint(path, args=None, arch="resnet18", **options):
    """A resnet18 checkpoint as main.py writes it; ``arch`` is the architecture it claims to hold."""
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=4, num_features=8, **options)
    checkpoint.save({"arch": arch, "model_options": dict(model.options), "model": model.state_dict(),
                     "epoch": 1, "args": args or {}}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rows, columns = torch.meshgrid(torch.arange(64), torch.arange(32), indexing="ij")
    image = torch.stack([rows * 4, columns * 8, (rows + columns) * 2]).clamp(max=255).to(torch.uint8)
    write_png(image, str(folder / "person.png"))
    return {"folder": folder, "image": str(folder / "person.png"),
            "dsp": write_checkpoint(str(folder / "dsp.pth.tar")),
            "trained_64x32": write_checkpoint(str(folder / "trained_64x32.pth.tar"), {"height": 64, "width": 32}),
            "other_arch": write_checkpoint(str(folder / "other_arch.pth.tar"), arch="resnet34"),
            "baseline": write_checkpoint(str(folder / "baseline.pth.tar"), dsa=False, deep_supervision=False)}


@pytest.fixture(autouse=True)
def no_cached_imagenet_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "imagenet_weights_path", lambda arch: str(tmp_path / "absent.pth"))


def average_correlations(text):
    return [float(value) for value in re.findall(r"^Avg\.Corr : (\d\.\d{3})", text, flags=re.MULTILINE)]


def test_feature_maps_figures_and_shapes_per_layer(files, tmp_path, capsys):
    out = tmp_path / "maps"
    argv = ["--checkpoint", files["dsp"], "--image", files["image"], "--layers", "layer1", "layer2", "layer4",
            "dsa1", "--out", str(out), *SIZE]
    assert single_images_features_3.main(argv) == 0
    shapes = {"layer1": (1, 64, 24, 8), "layer2": (1, 128, 12, 4), "layer4": (1, 512, 6, 2),
              "dsa1": (1, 64, 24, 8)}
    for layer, shape in shapes.items():
        saved = np.load(out / f"person_{layer}.npy", allow_pickle=False)
        assert saved.shape == shape and saved.dtype == np.float32
        assert (out / f"person_{layer}.png").stat().st_size > 0
        assert (out / f"person_{layer}_corr.png").stat().st_size > 0
    values = average_correlations(capsys.readouterr().out)
    assert len(values) == 4 and all(-1 <= value <= 1 for value in values)


def test_without_a_checkpoint_the_baseline_has_random_weights_with_a_note(files, tmp_path, capsys):
    argv = ["--image", files["image"], "-a", "resnet18", "--layers", "layer3", "--out", str(tmp_path), *SIZE]
    assert single_images_features_3.main(argv) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err
    assert np.load(tmp_path / "person_layer3.npy").shape == (1, 256, 6, 2)


def test_the_checkpoint_architecture_wins_over_arch(files, tmp_path, capsys):
    argv = ["--checkpoint", files["dsp"], "-a", "resnet50", "--image", files["image"], "--layers", "layer1",
            "--out", str(tmp_path), *SIZE]
    assert single_images_features_3.main(argv) == 0
    assert "-a resnet50 ignored" in capsys.readouterr().err
    assert np.load(tmp_path / "person_layer1.npy").shape[1] == 64


def test_compare_puts_baseline_and_dsp_side_by_side(files, tmp_path, capsys):
    argv = ["--checkpoint", files["baseline"], "--compare", files["dsp"], "--image", files["image"],
            "--out", str(tmp_path), *SIZE]
    assert single_images_features_3.main(argv) == 0
    assert len(average_correlations(capsys.readouterr().out)) == 4
    for layer in ("layer1", "layer2"):
        assert (tmp_path / f"person_{layer}_compare.png").stat().st_size > 0
        assert np.load(tmp_path / f"person_{layer}_baseline.npy").shape == np.load(
            tmp_path / f"person_{layer}_dsp.npy").shape


def test_the_input_size_defaults_to_the_checkpoint_training_size(files, tmp_path, capsys):
    argv = ["--checkpoint", files["trained_64x32"], "--image", files["image"], "--layers", "layer1",
            "--out", str(tmp_path)]
    assert single_images_features_3.main(argv) == 0
    assert "(input 64x32)" in capsys.readouterr().out
    assert np.load(tmp_path / "person_layer1.npy").shape == (1, 64, 16, 8)
    assert single_images_features_3.main([*argv, "--height", "96"]) == 0
    assert np.load(tmp_path / "person_layer1.npy").shape == (1, 64, 24, 8)
    argv = ["--checkpoint", files["trained_64x32"], "--image", files["image"], "--layer", "layer1",
            "--out", str(tmp_path / "cams")]
    assert single_features_cam.main(argv) == 0
    assert (tmp_path / "cams" / "person_cam.png").stat().st_size > 0


def test_without_a_recorded_size_the_input_is_384x128(files, tmp_path, capsys):
    argv = ["--checkpoint", files["dsp"], "--image", files["image"], "--layers", "layer4", "--out", str(tmp_path)]
    assert single_images_features_3.main(argv) == 0
    assert "(input 384x128)" in capsys.readouterr().out
    assert np.load(tmp_path / "person_layer4.npy").shape == (1, 512, 24, 8)


def test_compare_without_a_baseline_uses_a_fixed_untrained_resnet_of_the_dsp_depth(files, tmp_path, capsys):
    for out in ("first", "second"):
        argv = ["--compare", files["trained_64x32"], "--image", files["image"], "--layers", "layer1",
                "--out", str(tmp_path / out)]
        assert single_images_features_3.main(argv) == 0
    captured = capsys.readouterr()
    assert "Avg.Corr" in captured.out and "(layer1, baseline: untrained resnet18 (random weights))" in captured.out
    assert "(input 64x32)" in captured.out
    first = np.load(tmp_path / "first" / "person_layer1_baseline.npy")
    assert first.shape == (1, 64, 16, 8)
    np.testing.assert_array_equal(first, np.load(tmp_path / "second" / "person_layer1_baseline.npy"))


def test_correlation_of_a_saved_map(tmp_path, capsys):
    vector = np.random.default_rng(0).random((16, 1, 1)).astype(np.float32)
    np.save(tmp_path / "same.npy", np.broadcast_to(vector, (1, 16, 3, 2)))
    argv = ["--correlation", str(tmp_path / "same.npy"), "--out", str(tmp_path)]
    assert single_images_features_3.main(argv) == 0
    assert average_correlations(capsys.readouterr().out) == [1.0]
    assert (tmp_path / "same_corr.png").stat().st_size > 0


def test_to_npy_round_trip_gives_the_same_features(files, tmp_path, capsys):
    npy = str(tmp_path / "converted.npy")
    assert single_images_features_3.main(["--to-npy", files["image"], "--out", npy]) == 0
    saved = np.load(npy, allow_pickle=False)
    assert saved.shape == (64, 32, 3) and saved.dtype == np.uint8
    for source, name in ((files["image"], "person"), (npy, "converted")):
        argv = ["--checkpoint", files["dsp"], "--image", source, "--layers", "layer2", "--out", str(tmp_path),
                *SIZE]
        assert single_images_features_3.main(argv) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "person_layer2.npy"),
                                  np.load(tmp_path / "converted_layer2.npy"))
    assert single_images_features_3.main(["--to-npy", files["image"], "--out", str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "person.npy").is_file()


@pytest.mark.parametrize("case,message", [
    ("missing image", "does not exist"),
    ("unknown layer", "Unknown layer 'layer9'.*layer1, layer2, layer3, layer4, dsa1, dsa2, dsa3"),
    ("dsa without DSA", r"dsa2 is a DSA gate, but \S*baseline.pth.tar has no DSA blocks"),
    ("pickled npy", "pickled"),
    ("complex npy", "dtype complex"),
    ("damaged checkpoint", "Could not load the checkpoint"),
    ("foreign checkpoint", "not a checkpoint written by this project"),
    ("other architecture", "other_arch.pth.tar does not fit the model being built \\(resnet34"),
    ("other architecture compared", "other_arch.pth.tar does not fit the model being built \\(resnet34"),
])
def test_bad_input_is_a_clear_error(files, tmp_path, capsys, case, message):
    np.save(tmp_path / "objects.npy", np.array([None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "complex.npy", np.zeros((64, 32, 3), np.complex64))
    (tmp_path / "damaged.pth.tar").write_bytes(b"not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pth.tar")
    image, extra = files["image"], []
    if case == "missing image":
        image = str(tmp_path / "nothing.jpg")
    elif case == "unknown layer":
        extra = ["--checkpoint", files["dsp"], "--layers", "layer9"]
    elif case == "dsa without DSA":
        extra = ["--checkpoint", files["baseline"], "--layers", "dsa2"]
    elif case == "pickled npy":
        image = str(tmp_path / "objects.npy")
    elif case == "complex npy":
        image = str(tmp_path / "complex.npy")
    elif case == "damaged checkpoint":
        extra = ["--checkpoint", str(tmp_path / "damaged.pth.tar")]
    elif case == "other architecture":
        extra = ["--checkpoint", files["other_arch"]]
    elif case == "other architecture compared":
        extra = ["--compare", files["other_arch"]]
    else:
        extra = ["--checkpoint", str(tmp_path / "foreign.pth.tar")]
    argv = ["--image", image, "-a", "resnet18", "--out", str(tmp_path / "out"), *SIZE, *extra]
    assert single_images_features_3.main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


def test_grad_cam_for_an_image_and_a_folder(files, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    single_images_features_3.main(["--to-npy", files["image"], "--out", str(folder / "as_array.npy")])
    write_png(torch.zeros(3, 40, 20, dtype=torch.uint8), str(folder / "dark.png"))
    (folder / "notes.txt").write_text("not an image")
    capsys.readouterr()
    argv = ["--checkpoint", files["dsp"], "--image", str(folder), "--out", str(tmp_path / "cams"), *SIZE]
    assert single_features_cam.main(argv) == 0
    assert sorted(os.listdir(tmp_path / "cams")) == ["as_array_cam.png", "dark_cam.png"]
    printed = capsys.readouterr().out
    predictions = re.findall(r"predicted identity [0-3] \(training label index\), probability 0\.\d{3}", printed)
    assert len(predictions) == 2
    argv = ["--checkpoint", files["baseline"], "--image", files["image"], "--layer", "layer2",
            "--out", str(tmp_path / "one"), *SIZE]
    assert single_features_cam.main(argv) == 0
    assert os.listdir(tmp_path / "one") == ["person_cam.png"]


def test_grad_cam_refuses_bad_input(files, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for extra, message in [(["--image", str(empty)], "holds no"),
                           (["--image", files["image"], "--layer", "dsa1"], "Grad-CAM works on layer1"),
                           (["--image", str(tmp_path / "missing.png")], "neither an image file nor a folder")]:
        assert single_features_cam.main(["--checkpoint", files["dsp"], "--out", str(tmp_path), *extra]) == 2
        assert re.search(message, capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        single_features_cam.main(["--image", files["image"]])
    assert exit_info.value.code == 2


def test_a_bad_dpi_is_refused(files, capsys):
    for tool, argv in ((single_images_features_3, ["--image", files["image"]]),
                       (single_features_cam, ["--checkpoint", files["dsp"], "--image", files["image"]])):
        with pytest.raises(SystemExit) as exit_info:
            tool.main([*argv, "--dpi", "0"])
        assert exit_info.value.code == 2
        assert "--dpi must be at least 10" in capsys.readouterr().err


def test_command_line_exit_code_without_traceback(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((8, 8, 5), np.uint8))
    result = subprocess.run([sys.executable, "single_images_features_3.py", "--image", str(tmp_path / "flat.npy")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def sample_features_dry_run(tmp_path, *variables):
    """The commands ``make -n sample-features`` would run, continuation lines joined, venv set-up left out.

    ``--no-print-directory``: under ``make test`` (CI) this make is a sub-make, which would print
    "Entering directory" lines."""
    result = subprocess.run(["make", "--no-print-directory", "-n", "sample-features", f"DEMO_LOGS={tmp_path}/demo",
                             f"SAMPLE_DIR={tmp_path}/samples", f"SAMPLE_EVAL={tmp_path}/eval", *variables],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.replace("\\\n", " ").splitlines()]
    return [line for line in lines if "pip install" not in line and ".installed" not in line
            and not line.startswith("test -x")]


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_sample_features_dry_run_runs_each_tool_on_the_demo_model(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "model_best.pth.tar").touch()
    best, out, query = f"{tmp_path}/demo/model_best.pth.tar", f"{tmp_path}/samples", "data/synthetic/query"
    python = ".venv/bin/python"
    lines = sample_features_dry_run(tmp_path, f"SAMPLE_BASELINE={tmp_path}/no-baseline.pth.tar")
    assert lines[:2] == [f"mkdir -p {out}", f"rm -f {out}/*.npy {out}/*.png"]
    assert lines[2:6] == [
        f"{python} single_images_features_3.py --checkpoint {best} --image {query}/0101_c3s1_000025_01.jpg "
        f"--layers layer1 layer2 dsa1 --dpi 72 --out {out}",
        f"{python} single_images_features_3.py --compare {best} --image {query}/0150_c3s1_000025_01.jpg "
        f"--layers layer1 layer2 --dpi 72 --out {out}",
        f"{python} single_features_cam.py --checkpoint {best} --image {query}/0101_c3s1_000025_01.jpg "
        f"--dpi 72 --out {out}",
        f"{python} single_features_cam.py --checkpoint {best} --image {query}/0150_c3s1_000025_01.jpg "
        f"--dpi 72 --out {out}",
    ]
    evaluation = [line for line in lines if " main.py " in line]
    assert len(evaluation) == 1 and evaluation[0].startswith(f"{python} main.py -d synthetic --data-dir data/synthetic")
    assert evaluation[0].endswith(f"--evaluate --resume {best} --visrank 5 --logs-dir {tmp_path}/eval --overwrite")
    assert any(line.startswith(f"for figure in $(ls {tmp_path}/eval/visrank/*.png | head -n 2)") for line in lines)
    assert lines[-1] == f"cp {tmp_path}/demo/curves.png {out}/demo_curves.png"


@needs_make
def test_sample_features_dry_run_trains_the_demo_first_and_compares_with_a_trained_baseline(tmp_path):
    baseline = tmp_path / "baseline.pth.tar"
    baseline.touch()
    lines = sample_features_dry_run(tmp_path, f"SAMPLE_BASELINE={baseline}")
    training = [line for line in lines if " main.py " in line and "--evaluate" not in line]
    assert training == lines[:1]
    assert training[0].endswith(f"--combine-trainval --flip-test --rerank --logs-dir {tmp_path}/demo")
    compare = [line for line in lines if "--compare" in line]
    assert len(compare) == 1 and compare[0].endswith(f"--checkpoint {baseline}")


# Fault classes: sizes too large for memory, names that are not UTF-8, every format Pillow reads -----------------

@pytest.fixture
def earlier_output(tmp_path):
    """An output folder holding a file of an earlier run, which a refused run must leave as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "person_layer1.npy").write_bytes(b"an earlier run's map")
    return out


def assert_refused(capsys, code, *expected):
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)


def test_sizes_too_large_for_memory_are_refused_naming_the_flag_to_lower(files, tmp_path, capsys, monkeypatch,
                                                                        earlier_output):
    monkeypatch.setattr(images, "available_memory", lambda: 8 * 2**30)
    image = ["--image", files["image"], "--out", str(earlier_output)]
    code = single_images_features_3.main([*image, "--checkpoint", files["dsp"], "--height", "100000",
                                          "--width", "100000"])
    assert_refused(capsys, code, "error: The forward pass at the input size 100000x100000 needs about 9.3 TiB of "
                                 "memory, but only 8.0 GiB is available; lower --height/--width.")
    code = single_images_features_3.main([*image, "--checkpoint", files["dsp"], "--height", "512", "--width", "512"])
    assert_refused(capsys, code, "error: The correlation figure of layer1 (128x128 = 16,384 positions, a 16,384 x "
                                 "16,384 matrix) needs about 24.0 GiB of memory, but only 8.0 GiB is available; "
                                 "lower --height/--width, or leave layer1 out of --layers (a deeper layer has fewer "
                                 "positions).")
    code = single_images_features_3.main([*image, "--checkpoint", files["dsp"], *SIZE, "--dpi", "100000"])
    assert_refused(capsys, code, "more than the 65,535 pixels a side a figure may have; lower --dpi")
    code = single_features_cam.main([*image, "--checkpoint", files["dsp"], "--height", "2048", "--width", "1024"])
    assert_refused(capsys, code, "error: Grad-CAM at the input size 2048x1024 needs about 12.0 GiB of memory")
    code = single_features_cam.main([*image, "--checkpoint", files["dsp"], *SIZE, "--dpi", "3000"])
    assert_refused(capsys, code, "needs about", "of memory, but only 8.0 GiB is available; lower --dpi.")
    np.save(tmp_path / "wide.npy", np.zeros((1, 8, 256, 256), np.float32))
    code = single_images_features_3.main(["--correlation", str(tmp_path / "wide.npy"), "--out", str(earlier_output)])
    assert_refused(capsys, code, "(256x256 = 65,536 positions, a 65,536 x 65,536 matrix) needs about 384.0 GiB",
                   "save the map of a deeper layer, or of a smaller input (--height/--width)")
    assert os.listdir(earlier_output) == ["person_layer1.npy"]
    assert (earlier_output / "person_layer1.npy").read_bytes() == b"an earlier run's map"


def test_a_huge_dpi_under_a_memory_limit_is_refused_without_a_traceback(tmp_path):
    """The tool under ``ulimit -v`` (1 GiB above what it has mapped after its imports): the figure is refused
    from its size instead of failing with MemoryError."""
    np.save(tmp_path / "map.npy", np.random.default_rng(0).random((1, 8, 6, 2)).astype(np.float32))
    code = ("import resource, sys, single_images_features_3; from reid import images; "
            "used = images._meminfo('/proc/self/status', 'VmSize'); "
            "resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY)); "
            "sys.exit(single_images_features_3.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "--correlation", str(tmp_path / "map.npy"), "--dpi", "2000",
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: Drawing the figure ") and "lower --dpi." in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "map_corr.png").exists()


def test_names_that_are_not_utf8_are_shown_with_the_replacement_character(files, tmp_path, capsys):
    """The file is read and the outputs are written under the real bytes of its name; titles and printed lines
    show them as U+FFFD, as ls does."""
    folder = os.fsencode(tmp_path)
    source = os.path.join(folder, b"caf\xe9_\xff.png")
    shutil.copy(files["image"], source)
    out = tmp_path / "out"
    argv = ["--checkpoint", files["dsp"], "--image", os.fsdecode(source), "--out", str(out), *SIZE]
    assert single_features_cam.main(argv) == 0
    assert os.listdir(os.fsencode(out)) == [b"caf\xe9_\xff_cam.png"]
    assert "caf\ufffd_\ufffd.png: predicted identity" in capsys.readouterr().out
    assert single_features_cam.main([*argv[:3], os.fsdecode(folder), *argv[4:]]) == 0
    assert single_images_features_3.main([*argv, "--layers", "layer4"]) == 0
    written = sorted(os.listdir(os.fsencode(out)))
    assert written == [b"caf\xe9_\xff_cam.png", b"caf\xe9_\xff_layer4.npy", b"caf\xe9_\xff_layer4.png",
                       b"caf\xe9_\xff_layer4_corr.png"]
    models_folder = os.path.join(folder, b"mod\xe8les")
    os.mkdir(models_folder)
    shutil.copy(files["dsp"], os.path.join(models_folder, b"dsp.pth.tar"))
    capsys.readouterr()
    argv = ["--compare", os.fsdecode(os.path.join(models_folder, b"dsp.pth.tar")), "--image", os.fsdecode(source),
            "-a", "resnet18", "--layers", "layer4", "--out", os.fsdecode(os.path.join(folder, b"compare")), *SIZE]
    assert single_images_features_3.main(argv) == 0
    assert "(layer4, DSP: mod\ufffdles/dsp.pth.tar)" in capsys.readouterr().out
    assert os.listdir(os.path.join(folder, b"compare")) != []


def test_a_folder_of_images_is_read_by_their_bytes_and_other_files_are_skipped_with_a_note(files, tmp_path, capsys):
    """A BMP named .jpg (VIPeR ships BMPs), a TIFF without a suffix and a PNG are read; the text file and the
    empty .jpg are not images and are named in a note."""
    folder = tmp_path / "images"
    folder.mkdir()
    picture = Image.open(files["image"])
    picture.save(folder / "viper.jpg", format="BMP")
    picture.save(folder / "scan", format="TIFF")
    picture.save(folder / "crop.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "cams"
    assert single_features_cam.main(["--checkpoint", files["dsp"], "--image", str(folder), "--out", str(out),
                                     *SIZE]) == 0
    assert sorted(os.listdir(out)) == ["crop_cam.png", "scan_cam.png", "viper_cam.png"]
    captured = capsys.readouterr()
    assert f"note: skipped 2 entries of {folder} that are not images: empty.jpg, notes.txt" in captured.err
    assert len(re.findall("predicted identity", captured.out)) == 3
    for name in ("viper.jpg", "crop.png"):
        argv = ["--checkpoint", files["dsp"], "--image", str(folder / name), "--layers", "layer2",
                "--out", str(tmp_path / name), *SIZE]
        assert single_images_features_3.main(argv) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "viper.jpg" / "viper_layer2.npy"),
                                  np.load(tmp_path / "crop.png" / "crop_layer2.npy"))


def test_a_directory_given_as_the_image_is_named_as_such(files, tmp_path, capsys):
    code = single_images_features_3.main(["--image", str(tmp_path), "--checkpoint", files["dsp"], *SIZE])
    assert_refused(capsys, code, f"error: The image {tmp_path} is a directory, not an image file (--image expects "
                                 f"an image file or a .npy array).")


def test_float_npy_images_outside_0_1_are_refused(files, tmp_path, capsys):
    np.save(tmp_path / "floats.npy", np.full((64, 32, 3), 200.0, np.float32))
    code = single_images_features_3.main(["--image", str(tmp_path / "floats.npy"), "--checkpoint", files["dsp"],
                                          "--out", str(tmp_path), *SIZE])
    assert_refused(capsys, code, "has float values from 200 to 200, outside [0, 1]. Float images are read in [0, 1]")
