#!/usr/bin/env python3
"""Writes the small sample images in tests/fixtures/images/ (deterministic, fixed seed).

Good images cover every decoder path of siam-data's preprocessing: a photo-like JPEG, a JPEG with
EXIF orientation 6, grey, RGBA, 16-bit grey and 16-bit RGB PNGs, a palette PNG, lossy and lossless
WebP, a BMP, an animated GIF (the first frame counts) and an image smaller than the model input.
Bad files: a truncated JPEG, a zero-byte file and a text file named .jpg.

tests/fixtures/images/variants/ holds inputs that must work, each beside `<name>.rgb.png`, the
plain RGB image PIL decodes it to (first frame, EXIF orientation applied), which siam must embed
alike (tests/bad_input.rs): animated GIF, lossless WebP, 16-bit and 8-bit grayscale PNG, palette
PNG, CMYK JPEG, EXIF-rotated JPEG, a PNG named .jpg; and the same captions table twice, as a
plain TSV and as a CSV with a byte-order mark and quoted commas and quotes.

Packages (pinned): pillow==13.0.0, numpy==2.4.6.
Run: ${SIAM_PYTHON:-python3} scripts/make_test_images.py   (from the repository root)
"""
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "images")
rng = np.random.default_rng(20261129)


def photo_like(w: int, h: int) -> Image.Image:
    """Smooth gradients, shapes with soft edges and mild texture: resampling sees real structure."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 60 + 150 * x / w + 20 * np.sin(y / 9.0)
    g = 40 + 120 * y / h + 25 * np.cos(x / 13.0)
    b = 170 - 100 * (x + y) / (w + h)
    base = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.30, h * 0.20, w * 0.70, h * 0.85], fill=(230, 160, 70), outline=(40, 30, 20), width=3)
    d.ellipse([w * 0.40, h * 0.38, w * 0.46, h * 0.46], fill=(20, 120, 40))
    d.ellipse([w * 0.54, h * 0.38, w * 0.60, h * 0.46], fill=(20, 120, 40))
    d.polygon([(w * 0.32, h * 0.28), (w * 0.38, h * 0.05), (w * 0.45, h * 0.24)], fill=(210, 140, 60))
    d.polygon([(w * 0.55, h * 0.24), (w * 0.62, h * 0.05), (w * 0.68, h * 0.28)], fill=(210, 140, 60))
    d.rectangle([w * 0.05, h * 0.70, w * 0.25, h * 0.95], fill=(30, 60, 200))
    for i in range(12):
        d.line([(0, i * h / 12), (w, i * h / 12 + 20)], fill=(250, 250, 250), width=1)
    return img


def write_png_rgb16(path: str, arr: np.ndarray) -> None:
    """PIL cannot write 16-bit RGB PNGs: write one by hand (IHDR bit depth 16, colour type 2)."""
    h, w, _ = arr.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    p = lambda name: os.path.join(OUT, name)

    cat = photo_like(320, 240)
    cat.save(p("cat_like.jpg"), quality=90)

    # Stored landscape 200x120 with EXIF orientation 6: displayed (and decoded) as 120x200 portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    photo_like(200, 120).save(p("exif_rot6.jpg"), quality=90, exif=exif.tobytes())

    photo_like(150, 100).convert("L").save(p("gray.png"))

    rgba = photo_like(120, 90).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 120, dtype=np.float32), (90, 1)).astype(np.uint8)
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(p("rgba.png"))

    grey16 = (np.asarray(photo_like(64, 48).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    grey16 = grey16 + rng.integers(0, 200, grey16.shape, dtype=np.uint16)
    Image.fromarray(grey16).save(p("gray16.png"))

    rgb16 = np.asarray(photo_like(72, 56), dtype=np.uint16) * 257 + rng.integers(0, 200, (56, 72, 3), dtype=np.uint16)
    write_png_rgb16(p("rgb16.png"), rgb16)

    photo_like(100, 80).quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(p("palette.png"))

    photo_like(160, 120).save(p("photo_lossy.webp"), quality=90, method=4)
    photo_like(96, 72).save(p("photo_lossless.webp"), lossless=True)
    photo_like(90, 70).save(p("photo.bmp"))

    frames = [photo_like(64, 64).quantize(colors=64, dither=Image.Dither.NONE)]
    frames.append(Image.fromarray(255 - np.asarray(photo_like(64, 64)), "RGB").quantize(colors=64, dither=Image.Dither.NONE))
    frames[0].save(p("animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)

    photo_like(24, 16).save(p("tiny_upscale.png"))

    # Bad inputs.
    data = open(p("cat_like.jpg"), "rb").read()
    open(p("truncated.jpg"), "wb").write(data[: len(data) // 2])
    open(p("empty.jpg"), "wb").close()
    open(p("not_an_image.jpg"), "w").write("This is a text file with a .jpg name, not an image.\n")

    write_variants(os.path.join(OUT, "variants"))

    total = 0
    for name in sorted(os.listdir(OUT)):
        if os.path.isdir(p(name)):
            continue
        size = os.path.getsize(p(name))
        total += size
        assert size < 60_000, (name, size)
        print(f"{name:24s} {size:7d} bytes")
    assert total < 400_000, total
    print(f"total {total} bytes")


def write_variants(out: str) -> None:
    """Inputs that must embed like the plain RGB image PIL decodes them to."""
    from PIL import ImageOps

    os.makedirs(out, exist_ok=True)
    v = lambda name: os.path.join(out, name)
    base = photo_like(96, 80)
    frames = [base.quantize(colors=64, dither=Image.Dither.NONE),
              Image.fromarray(255 - np.asarray(base), "RGB").quantize(colors=64, dither=Image.Dither.NONE)]
    frames[0].save(v("animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    base.save(v("lossless.webp"), lossless=True)
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(v("gray16.png"))
    base.convert("L").save(v("gray.png"))
    base.quantize(colors=48, dither=Image.Dither.NONE).save(v("palette.png"))
    base.convert("CMYK").save(v("cmyk.jpg"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(v("exif_rot6.jpg"), quality=95, exif=exif.tobytes())
    base.save(v("png_named.jpg"), format="PNG")
    for name in ["animated.gif", "lossless.webp", "gray16.png", "gray.png", "palette.png", "cmyk.jpg",
                 "exif_rot6.jpg", "png_named.jpg"]:
        im = Image.open(v(name))
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if im.mode == "I;16":
            # PIL keeps 16-bit grey as I;16; CLIP-style decoding takes the high byte.
            im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8), "L")
        im.convert("RGB").save(v(name + ".rgb.png"))
    texts = ['a photo, with a comma', 'a "quoted" word, twice', 'plain text']
    images = ["gray.png", "palette.png", "lossless.webp"]
    with open(v("plain.tsv"), "w", newline="") as f:
        f.write("image\ttext\n")
        for i, t in zip(images, texts):
            f.write(f"{i}\t{t}\n")
    with open(v("bom_quoted.csv"), "w", encoding="utf-8-sig", newline="") as f:
        f.write("image,text\r\n")
        for i, t in zip(images, texts):
            q = t.replace('"', '""')
            f.write(f'"{i}","{q}"\r\n')


if __name__ == "__main__":
    main()
