"""reid.images on what real image folders contain: 16-bit PNGs, an animated GIF saved under a .jpg name, EXIF
orientation, CMYK JPEGs, palettes and alpha; and .npy arrays converted the way those files are.

Reference for how a picture should come out: Pillow, which viewers and most re-ID code use to open images."""
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.io import write_png

from reid import data, images
from reid.errors import UsageError

RNG = np.random.default_rng(0)


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


def write_rgb48_png(path, pixels):
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), written from the PNG specification: Pillow
    cannot write this kind, which scanners and raw converters produce."""
    height, width, _ = pixels.shape
    scanlines = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines))
                     + chunk(b"IEND", b""))


def test_a_16_bit_rgb_png_is_scaled_to_8_bits(tmp_path):
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


def test_the_loaders_read_these_images_too(tmp_path):
    """Training and evaluation read through ``reid.data``; a 16-bit PNG and a GIF named .jpg go through."""
    gif, png = tmp_path / "0001_c1s1_000001_00.jpg", tmp_path / "0002_c1s1_000002_00.png"
    Image.fromarray(blocks()).save(gif, format="GIF")
    write_rgb48_png(png, RNG.integers(0, 65536, (32, 16, 3), dtype=np.uint16))
    loader = data.test_loader([(str(gif), 1, 0), (str(png), 2, 0)], height=32, width=16, batch_size=2, workers=0)
    batch, pids, _, _ = next(iter(loader))
    assert batch.shape == (2, 3, 32, 16) and batch.dtype == torch.uint8 and pids.tolist() == [1, 2]
    assert torch.equal(batch[0], pillow_rgb(gif))


def test_a_format_torchvision_cannot_decode_is_named(tmp_path):
    path = tmp_path / "0003_c1s1_000003_00.jpg"
    Image.fromarray(blocks()).save(path, format="BMP")
    with pytest.raises(UsageError, match="0003_c1s1_000003_00.jpg.*Expected a JPEG, PNG, GIF or WebP file"):
        images.read_image(str(path))


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


def test_a_16_bit_array_is_scaled_like_a_16_bit_png(tmp_path):
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


@pytest.mark.parametrize("layout", ["hwc_uint8", "chw_uint8", "hwc_float01", "chw_float01", "hwc_float255",
                                    "chw_float255"])
def test_every_npy_layout_gives_the_same_tensor(gradient_image, tmp_path, layout):
    image = gradient_image()
    hwc = image.permute(1, 2, 0).numpy()
    arrays = {"hwc_uint8": hwc, "chw_uint8": image.numpy(), "hwc_float01": hwc / 255.0,
              "chw_float01": (image.numpy() / 255.0).astype(np.float32), "hwc_float255": hwc.astype(np.float32),
              "chw_float255": image.numpy().astype(np.float64)}
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
