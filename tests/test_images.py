"""reid.images on what real image folders contain: 16-bit PNGs, an animated GIF saved under a .jpg name, EXIF
orientation, CMYK JPEGs, palettes and alpha; and .npy arrays converted the way those files are.

Reference for how a picture should come out: Pillow, which viewers and most re-ID code use to open images."""
import os
import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.io import write_png
from torchvision.transforms.v2.functional import to_dtype

from reid import data, images
from reid.errors import UsageError

RNG = np.random.default_rng(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(height=32, width=16, block=8, channels=3):
    """A picture of flat 8x8 blocks of random colours: survives JPEG almost unchanged, shows any rotation."""
    colours = RNG.integers(0, 256, (height // block, width // block, channels))
    return np.kron(colours, np.ones((block, block, 1))).astype(np.uint8)


def as_tensor(array_hwc):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array_hwc).transpose(2, 0, 1)))


def pillow_rgb(path):
    """The picture as Pillow shows it: EXIF orientation applied, first frame, converted to RGB."""
    with Image.open(path) as picture:
        return as_tensor(ImageOps.exif_transpose(picture).convert("RGB"))


def test_a_16_bit_rgb_png_is_scaled_to_8_bits(tmp_path, write_rgb48_png):
    pixels = RNG.integers(0, 65536, (24, 12, 3), dtype=np.uint16)
    path = tmp_path / "0001_c1s1_000001_00.png"
    write_rgb48_png(path, pixels)
    image = images.read_image(str(path))
    assert image.dtype == torch.uint8
    assert torch.equal(image, as_tensor((pixels >> 8).astype(np.uint8)))
    assert torch.equal(image, pillow_rgb(path))


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_and_becomes_rgb(tmp_path):
    pixels = RNG.integers(0, 65536, (24, 12), dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == "I;16"
    high_byte = (pixels >> 8).astype(np.uint8)
    assert torch.equal(images.read_image(str(path)), as_tensor(np.stack([high_byte] * 3, axis=-1)))


def test_an_animated_gif_named_jpg_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(blocks()) for _ in range(3)]
    path = tmp_path / "0002_c2s1_000002_00.jpg"
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = images.read_image(str(path))
    assert image.shape == (3, 32, 16) and image.dtype == torch.uint8
    assert torch.equal(image, pillow_rgb(path))
    assert torch.equal(images.load_image(str(path)), image), "the feature tools' --image reads it the same way"
    with Image.open(path) as gif:
        gif.seek(1)
        assert not torch.equal(image, as_tensor(gif.convert("RGB")))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_the_exif_orientation_is_applied(tmp_path, orientation, suffix):
    """A phone photo stored sideways with an EXIF Orientation tag (1 to 8) is read upright, as viewers show it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(blocks()).save(path, exif=exif, quality=95)
    image = images.read_image(str(path))
    assert image.shape == ((3, 32, 16) if orientation <= 4 else (3, 16, 32))
    assert torch.equal(image, pillow_rgb(path))


@pytest.mark.parametrize("mode, suffix", [("CMYK", ".jpg"), ("L", ".jpg"), ("P", ".png"), ("LA", ".png"),
                                          ("RGBA", ".png"), ("1", ".png")])
def test_other_colour_modes_become_the_rgb_pillow_shows(tmp_path, mode, suffix):
    path = tmp_path / f"picture{suffix}"
    picture = Image.fromarray(blocks(channels=4), "RGBA")
    (picture if "A" in mode else picture.convert("RGB")).convert(mode).save(path)
    assert torch.equal(images.read_image(str(path)), pillow_rgb(path))


def test_the_loaders_read_these_images_too(tmp_path, write_rgb48_png):
    """Training and evaluation read through ``reid.data``; a 16-bit PNG and a GIF named .jpg go through."""
    gif, png = tmp_path / "0001_c1s1_000001_00.jpg", tmp_path / "0002_c1s1_000002_00.png"
    Image.fromarray(blocks()).save(gif, format="GIF")
    write_rgb48_png(png, RNG.integers(0, 65536, (32, 16, 3), dtype=np.uint16))
    loader = data.test_loader([(str(gif), 1, 0), (str(png), 2, 0)], height=32, width=16, batch_size=2, workers=0)
    batch, pids, _, _ = next(iter(loader))
    assert batch.shape == (2, 3, 32, 16) and batch.dtype == torch.uint8 and pids.tolist() == [1, 2]
    assert torch.equal(batch[0], pillow_rgb(gif))


@pytest.mark.parametrize("name", ["0003_c1s1_000003_00.jpg", "no_suffix"])
@pytest.mark.parametrize("image_format", ["BMP", "TIFF", "PPM", "TGA", "PCX", "SGI"])
def test_every_format_pillow_reads_is_read_by_its_bytes_not_its_name(tmp_path, image_format, name):
    """VIPeR ships BMPs; users' folders hold TIFFs and PPMs, often under a .jpg name or none."""
    pixels = blocks()
    path = tmp_path / name
    Image.fromarray(pixels).save(path, format=image_format)
    assert torch.equal(images.read_image(str(path)), as_tensor(pixels))
    assert torch.equal(images.load_image(str(path)), as_tensor(pixels)), "the feature tools' --image"
    assert images.is_image_file(str(path))
    loader = data.test_loader([(str(path), 1, 0)], height=32, width=16, batch_size=1, workers=0)
    assert torch.equal(next(iter(loader))[0][0], as_tensor(pixels)), "training and evaluation"


@pytest.mark.parametrize("content, reason", [(b"", "the file is empty"),
                                             (b"user notes, not a picture\n", "Pillow does not recognise its format")])
def test_a_file_pillow_does_not_recognise_is_named_with_the_reason(tmp_path, content, reason):
    path = tmp_path / "0003_c1s1_000003_00.jpg"
    path.write_bytes(content)
    with pytest.raises(UsageError) as refused:
        images.read_image(str(path))
    assert str(refused.value) == (f"Cannot read the image {path}: {reason}. Expected an image file (JPEG, PNG, BMP, "
                                  f"GIF, TIFF, WebP or another format Pillow reads); remove or replace it.")
    assert not images.is_image_file(str(path)) and path.read_bytes() == content


def test_a_directory_or_a_missing_path_is_named_as_such(tmp_path):
    with pytest.raises(UsageError, match=f"^The image {tmp_path} is a directory, not an image file.$"):
        images.read_image(str(tmp_path))
    with pytest.raises(UsageError, match=r"is a directory, not an image file \(--image expects an image file"):
        images.load_image(str(tmp_path))
    with pytest.raises(UsageError, match=f"^The image {tmp_path}/absent.png does not exist.$"):
        images.read_image(str(tmp_path / "absent.png"))
    assert not images.is_image_file(str(tmp_path))


# .npy arrays, converted the way image files are ------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_an_npy_array_gives_the_same_image_as_the_file_of_that_picture(tmp_path, mode, layout):
    picture = Image.fromarray(blocks(channels=4), "RGBA").convert(mode)
    picture.save(tmp_path / "picture.png")
    array = np.asarray(picture)
    if layout == "chw":
        array = array[np.newaxis] if array.ndim == 2 else array.transpose(2, 0, 1)
    np.save(tmp_path / "picture.npy", array)
    loaded = images.load_image(str(tmp_path / "picture.npy"))
    assert torch.equal(loaded, images.read_image(str(tmp_path / "picture.png")))


@pytest.mark.parametrize("shape", [(32, 16), (32, 16, 1), (1, 32, 16)])
def test_grayscale_arrays_are_repeated_to_three_channels(shape):
    gray = RNG.integers(0, 256, (32, 16), dtype=np.uint8)
    image = images.image_from_array(gray.reshape(shape), "gray.npy")
    assert torch.equal(image, torch.from_numpy(np.stack([gray] * 3)))


def test_a_16_bit_array_is_scaled_like_a_16_bit_png(tmp_path, write_rgb48_png):
    pixels = RNG.integers(0, 65536, (24, 12, 3), dtype=np.uint16)
    write_rgb48_png(tmp_path / "picture.png", pixels)
    assert torch.equal(images.image_from_array(pixels, "uint16"), images.read_image(str(tmp_path / "picture.png")))


@pytest.mark.parametrize("shape, expected", [((3, 24, 4), (3, 24, 4)), ((4, 24, 3), (3, 4, 24)),
                                             ((4, 24, 1), (3, 4, 24)), ((24, 12, 4), (3, 24, 12))])
def test_an_array_that_fits_two_layouts_is_read_as_rgb_first_then_as_h_x_w_x_c(shape, expected):
    assert images.image_from_array(np.zeros(shape, np.uint8), "ambiguous").shape == expected


@pytest.mark.parametrize("array, message", [
    (np.zeros((24, 12, 5), np.uint8), "shape"),
    (np.zeros((2, 24, 12, 3), np.uint8), "shape"),
    (np.zeros((0, 12), np.uint8), "shape"),
    (np.zeros((24, 12, 3), np.int64), "dtype"),
    (np.zeros((24, 12), np.complex64), "dtype"),
    (np.full((24, 12, 4), np.nan), "NaN"),
    (np.full((24, 12), 256.0), "outside"),
])
def test_arrays_that_are_no_image_are_refused(array, message):
    with pytest.raises(UsageError, match=message):
        images.image_from_array(array, "bad.npy")


class RunsACommand:
    def __reduce__(self):
        return (print, ("this would have been code",))


@pytest.mark.parametrize("write, expected", [
    (lambda path: np.save(path, np.array([RunsACommand()], dtype=object), allow_pickle=True),
     "holds pickled Python objects (a numpy object array), which no image needs; it was not loaded, since "
     "unpickling them could run code"),
    (lambda path: path.write_bytes(pickle.dumps(RunsACommand())),
     "is a pickled Python object, not a .npy file; it was not loaded, since unpickling it could run code"),
    (lambda path: path.write_text("0 1 2\n3 4 5\n"), "it is not a .npy file (it does not start with numpy's header)"),
], ids=["object array", "pickle", "text"])
def test_an_npy_file_that_needs_unpickling_is_refused_without_unsafe_advice(tmp_path, capsys, write, expected):
    path = tmp_path / "picture.npy"
    write(path)
    with pytest.raises(UsageError) as refused:
        images.load_image(str(path))
    message = str(refused.value)
    assert str(path) in message and expected in message and "\n" not in message
    assert "allow_pickle" not in message
    assert "this would have been code" not in capsys.readouterr().out


@pytest.mark.parametrize("mode,suffix", [("RGB", ".jpg"), ("L", ".jpg"), ("RGBA", ".png"), ("L", ".png")])
def test_read_image_gives_rgb_uint8(write_image, tmp_path, mode, suffix):
    image = images.read_image(write_image(tmp_path / f"x{suffix}", mode))
    assert image.shape == (3, 32, 16) and image.dtype == torch.uint8


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_unreadable_images_name_the_file(write_image, tmp_path, content):
    path = tmp_path / "0001_c1s1_000001_00.jpg"
    if content is None:
        write_image(path)
        content = path.read_bytes()[:60]
    path.write_bytes(content)
    with pytest.raises(UsageError, match="0001_c1s1_000001_00.jpg"):
        images.read_image(str(path))


@pytest.mark.parametrize("layout", ["hwc_uint8", "chw_uint8", "hwc_float01", "chw_float01", "hwc_float16"])
def test_every_npy_layout_gives_the_same_tensor(gradient_image, tmp_path, layout):
    image = gradient_image()
    hwc = image.permute(1, 2, 0).numpy()
    arrays = {"hwc_uint8": hwc, "chw_uint8": image.numpy(), "hwc_float01": hwc / 255.0,
              "chw_float01": (image.numpy() / 255.0).astype(np.float32),
              "hwc_float16": (hwc / 255.0).astype(np.float16)}
    path = str(tmp_path / "image.npy")
    np.save(path, arrays[layout])
    loaded = images.load_image(path)
    assert loaded.dtype == torch.uint8 and torch.equal(loaded, image)


def test_an_image_file_and_its_npy_conversion_agree(gradient_image, tmp_path):
    image = gradient_image()
    write_png(image, str(tmp_path / "image.png"))
    images.save_image_npy(str(tmp_path / "image.png"), str(tmp_path / "image.npy"))
    saved = np.load(tmp_path / "image.npy", allow_pickle=False)
    assert saved.shape == (24, 12, 3) and saved.dtype == np.uint8
    assert torch.equal(images.load_image(str(tmp_path / "image.png")), image)
    assert torch.equal(images.load_image(str(tmp_path / "image.npy")), image)


@pytest.mark.parametrize("array,message", [
    (np.zeros((24, 12, 5), np.uint8), "shape"),
    (np.zeros((1, 24, 12, 3), np.uint8), "shape"),
    (np.zeros((24, 12, 3, 1), np.uint8), "shape"),
    (np.zeros((24, 12, 3), np.complex64), "dtype"),
    (np.zeros((24, 12, 3), bool), "dtype"),
    (np.zeros((24, 12, 3), np.int64), "dtype"),
    (np.full((24, 12, 3), 300.0), "outside"),
    (np.full((24, 12, 3), np.nan), "NaN"),
    (np.full((24, 12, 3), -1.0), "outside"),
])
def test_bad_image_arrays_are_refused(tmp_path, array, message):
    path = str(tmp_path / "bad.npy")
    np.save(path, array)
    with pytest.raises(UsageError, match=message):
        images.load_image(path)


# Float and 16-bit arrays: one convention each, whatever the values -------------------------------------------

def test_float_arrays_are_in_0_1_and_each_pixel_is_converted_on_its_own():
    """The scale never depends on the values: a dark picture (all values at most 1/255) and a bright one are
    converted pixel by pixel as torchvision's to_dtype converts them, so any part of an array converts alone
    to what it gives within the whole."""
    rng = np.random.default_rng(1)
    dark, bright = rng.uniform(0, 0.5 / 255, (8, 12, 3)), rng.uniform(0, 1, (8, 12, 3))
    for pixels in (dark, bright, np.concatenate([dark, bright])):
        expected = to_dtype(torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32)), torch.uint8, scale=True)
        assert torch.equal(images.image_from_array(pixels, "floats"), expected)
    whole = images.image_from_array(np.concatenate([dark, bright]), "whole")
    assert torch.equal(whole[:, :8], images.image_from_array(dark, "dark"))
    assert torch.equal(whole[:, 8:], images.image_from_array(bright, "bright"))
    assert images.image_from_array(dark, "dark").max() == 0, "a dark picture stays dark: no rescaling by its maximum"


@pytest.mark.parametrize("values, shown", [((0.0, 254.0), "from 0 to 254"), ((0.5, 1.0000001), "from 0.5 to 1"),
                                           ((-0.01, 0.5), "from -0.01 to 0.5")])
def test_floats_outside_0_1_are_refused_not_rescaled(tmp_path, values, shown):
    """[0, 255] floats, and a [0, 1] array with one value slightly outside, are refused with the range found."""
    pixels = np.full((8, 4, 3), values[0], np.float32)
    pixels[0, 0, 0] = values[1]
    np.save(tmp_path / "floats.npy", pixels)
    before = (tmp_path / "floats.npy").read_bytes()
    with pytest.raises(UsageError) as refused:
        images.load_image(str(tmp_path / "floats.npy"))
    message = str(refused.value)
    assert message.startswith(f"The image {tmp_path / 'floats.npy'} has float values {shown}")
    assert "outside [0, 1]" in message and "divide pixels in [0, 255] by 255" in message
    assert (tmp_path / "floats.npy").read_bytes() == before


def test_a_uint16_array_is_16_bit_over_the_full_range_and_8_bit_values_in_it_are_refused():
    pixels = RNG.integers(0, 65536, (8, 4, 3), dtype=np.uint16)
    assert torch.equal(images.image_from_array(pixels, "16-bit"), as_tensor((pixels >> 8).astype(np.uint8)))
    assert images.image_from_array(np.zeros((8, 4), np.uint16), "black").max() == 0
    eight_bit = RNG.integers(0, 256, (8, 4, 3)).astype(np.uint16)
    with pytest.raises(UsageError, match=r"The image eight-bit is a uint16 array whose values are all at most "
                                         r"\d+\. uint16 images are read over the full 16-bit range 0\.\.65535.*"
                                         r"array\.astype\(numpy\.uint8\)"):
        images.image_from_array(eight_bit, "eight-bit")


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_a_16_bit_pil_image_gives_the_pixels_of_its_png_file(tmp_path, mode):
    """Pillow's own convert('RGB') clips 16-bit samples at 255; the one conversion keeps the high byte."""
    pixels = RNG.integers(256, 65536, (24, 12), dtype=np.uint16)
    picture = Image.frombytes(mode, (12, 24), pixels.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    Image.fromarray(pixels).save(tmp_path / "gray16.png")
    from_file = images.read_image(str(tmp_path / "gray16.png"))
    assert torch.equal(images.image_from_pil(picture, "picture"), from_file)
    assert torch.equal(images.image_from_array(pixels, "array"), from_file)
    with Image.open(tmp_path / "gray16.png") as opened:
        assert torch.equal(images.image_from_pil(opened, "opened"), from_file)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_pil_images_have_no_agreed_scale_and_are_refused(mode):
    picture = Image.new(mode, (4, 8), 3)
    with pytest.raises(UsageError, match=f"The image given has 32-bit .* samples \\(PIL mode {mode}\\), which have "
                                         f"no agreed scale"):
        images.image_from_pil(picture, "given")


# Images too large to decode ------------------------------------------------------------------------------------

def write_black_png(path, width, height):
    """A 1-bit black PNG of any size, written without the picture in memory: 30,000 x 30,000 is 110 kB."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = bytes(1 + (width + 7) // 8) * 1000
    compressor = zlib.compressobj()
    idat = b"".join(compressor.compress(rows[:len(rows) // 1000 * min(1000, height - done)])
                    for done in range(0, height, 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory):
    """A 30,000 x 30,000 PNG: 0.1 MB on disk, 2.7 GB decoded to RGB."""
    return write_black_png(tmp_path_factory.mktemp("huge") / "0001_c1s1_000001_00.png", 30000, 30000)


def test_an_image_that_decodes_to_gigabytes_is_refused_from_its_header(huge_png):
    before = os.path.getsize(huge_png)
    for read in (images.read_image, images.load_image):
        with pytest.raises(UsageError) as refused:
            read(huge_png)
        assert str(refused.value) == (
            f"The image {huge_png} has 900,000,000 pixels (from its header), more than the 89,478,485 pixels Pillow "
            f"decodes (PIL.Image.MAX_IMAGE_PIXELS; an image this large may be a decompression bomb). Shrink or "
            f"crop it, or remove it.")
    assert images.is_image_file(huge_png) and os.path.getsize(huge_png) == before
    loader = data.test_loader([(huge_png, 1, 0)], height=32, width=16, batch_size=1, workers=0)
    with pytest.raises(UsageError, match="900,000,000 pixels"):
        next(iter(loader))


def test_check_decoded_size_names_the_size_before_anything_is_decoded(tmp_path, monkeypatch):
    large = write_black_png(tmp_path / "large.png", 10000, 10000)
    with pytest.warns(Image.DecompressionBombWarning), Image.open(large) as opened:
        with pytest.raises(UsageError, match=r"^The image large.png is 10000x10000 pixels \(100,000,000, from its "
                                             r"header\), more than the 89,478,485 pixels Pillow decodes"):
            images.check_decoded_size("large.png", opened)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**8)
    monkeypatch.setattr(images, "available_memory", lambda: 512 * 2**20)
    with pytest.raises(UsageError) as refused:
        images.read_image(large)
    assert str(refused.value) == (f"Decoding the image {large} (10000x10000 pixels) needs about 1.5 GiB of memory, "
                                  f"but only 512.0 MiB is available; shrink or crop it, or remove it.")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    small = tmp_path / "small.png"
    Image.fromarray(blocks()).save(small)
    with pytest.raises(UsageError, match=r"is 16x32 pixels \(512, from its header\), more than the 300 pixels"):
        images.read_image(str(small))


def test_the_available_memory_honours_an_address_space_limit():
    """``ulimit -v``: what the process may still map, not the machine's free memory."""
    code = ("import resource; from reid import images; "
            "used = images._meminfo('/proc/self/status', 'VmSize'); "
            "resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY)); "
            "print(images.available_memory() <= 2**30)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True"], result.stderr
