"""Opening images of any mode Pillow reads as 8-bit RGB, with errors that name the file.

Grayscale, palette, CMYK and YCbCr images are converted by Pillow; alpha is dropped (as the authors' loaders did);
16-bit and 32-bit integer images ('I;16', 'I') are scaled from 0..65535 to 0..255 rather than clipped.
The EXIF orientation is applied, so the network sees the picture as a viewer shows it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

SIXTEEN_BIT_MAX = 65535
EIGHT_BIT_MAX = 255


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Read the image at `path` as an RGB image; unreadable files and decompression bombs raise DataError."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse at Pillow's limit, not 2x
            with Image.open(path) as image:
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{path}: refused as a possible decompression bomb ({error}); "
                        "downscale the image before using it.") from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image file.") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read (unknown format or damaged header); "
                        "use a JPEG, PNG, BMP, TIFF or WebP file.") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: the image cannot be decoded ({error}); the file is probably truncated or damaged."
                        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `image` whatever its mode; high bit-depth grayscale is rescaled, not clipped."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode.startswith("I") or image.mode == "F":
        return _wide_gray_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise DataError(f"cannot convert a {image.mode!r} image to RGB ({error}); save it as RGB first.") from None


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    """'I;16*', 'I' and 'F' images: 16-bit range to 8 bits when values exceed 255 (always for 'I;16*')."""
    wide = image.convert("F") if image.mode != "F" else image
    high = wide.getextrema()[1]
    sixteen_bit = image.mode.startswith("I;16") or high > EIGHT_BIT_MAX
    scale = EIGHT_BIT_MAX / SIXTEEN_BIT_MAX if sixteen_bit else 1.0
    return wide.point(lambda value: value * scale).convert("L").convert("RGB")  # F -> L clips to 0..255
