"""Photo check cost for a 12-megapixel JPEG, as a ratio to a plain full decode (DESIGN §8).

    python benchmarks/photo_check.py [--iterations 10] [--source astronaut] [--grain 0]
    python benchmarks/photo_check.py --calibrate

The check is everything the intake does per photo: inspect_image (sha256,
drafted decode, sharpness, perceptual hash, EXIF), evaluate and the 320 px
thumbnail. The baseline is ``Image.open(...).load()`` of the same bytes.
Runs alternate between the two so that load from other processes hits both
alike; medians are reported. ``--grain`` adds sensor-like noise (grey levels)
so the file has a phone-like bitrate: entropy decoding, which drafting cannot
skip, then weighs more.

``ratio`` is the common case, a sharp photo settled by the quick look (1/8
decode). ``closer_look_ratio`` is a photo that is not clearly sharp (the same
one, shaken), which is decoded again at 1/4 to be judged. Neither ever
decodes at full resolution. On our 2-core VMs (astronaut, no grain) ``ratio``
measured 0.29-0.33 (0.30-0.37 for the other sources) and
``closer_look_ratio`` 0.56-0.67; with ``--grain 3`` (2 MB file) 0.41 and
0.86, as entropy decoding, which no draft can skip, then dominates. About
half of a plain decode's time there is page faults for its 48 MB of fresh
pixels (Pillow's block cache halves it, and doubles every ratio).

``--calibrate`` prints the sharpness of sharp and shaken 12 MP photos (blur
applied at full resolution) at both scales and the perceptual-hash distances
behind the defaults in ``PhotoPolicy``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from accident_service.photos.checks import PhotoPolicy, evaluate, hamming_distance  # noqa: E402
from accident_service.photos.inspect import (  # noqa: E402
    decode_preview,
    inspect_image,
    inspect_image_with_preview,
    open_image,
)
from accident_service.photos.measures import (  # noqa: E402
    QUICK_SIDE,
    STRUCTURE_FACTOR,
    sharpness,
    working_gray,
)
from accident_service.photos.thumbnails import make_thumbnail  # noqa: E402
from tests.photos import images  # noqa: E402

MAX_ITERATIONS = 50
CALIBRATION_SOURCES = (*images.SHARPNESS_SOURCES, "coins", "brick", "gravel")
CALIBRATION_SIGMAS = (0, 4, 8, 12, 16)


def phone_jpeg(source: str, grain: float, blur_sigma: float = 0.0) -> bytes:
    picture = images.phone_photo(source, blur_sigma=blur_sigma)
    if grain > 0:
        noise = np.random.default_rng(0).normal(0.0, grain, (picture.height, picture.width, 1))
        picture = Image.fromarray(np.clip(np.asarray(picture) + noise, 0, 255).astype(np.uint8))
    taken = datetime(2024, 5, 1, 11, 50)  # EXIF present, so its parsing is timed too
    return images.encode(picture, exif=images.exif_block(taken_at=taken, orientation=1))


def full_decode(data: bytes) -> None:
    Image.open(BytesIO(data)).load()


def full_check(data: bytes) -> None:
    policy = PhotoPolicy()
    facts, preview = inspect_image_with_preview(data, max_pixels=policy.max_pixels,
                                                clearly_sharp=policy.clearly_sharp)
    evaluate(facts, policy=policy, received_at=datetime.now(UTC), existing=[])
    make_thumbnail(preview, orientation=facts.orientation)


def timed_ms(function: Callable[[bytes], None], data: bytes) -> tuple[float, float]:
    """(wall, CPU) milliseconds; CPU time is less disturbed by a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(data)
    return (time.perf_counter() - wall) * 1000.0, (time.process_time() - cpu) * 1000.0


def compare(data: bytes, iterations: int) -> tuple[float, float, float, float]:
    """(median full decode ms, median check ms, wall ratio, CPU ratio)."""
    full_decode(data), full_check(data)  # warm caches and lazy imports
    decode_runs: list[tuple[float, float]] = []
    check_runs: list[tuple[float, float]] = []
    for _ in range(iterations):
        decode_runs.append(timed_ms(full_decode, data))
        check_runs.append(timed_ms(full_check, data))
    decode, check = (statistics.median(wall for wall, _ in runs) for runs in (decode_runs, check_runs))
    decode_cpu, check_cpu = (statistics.median(cpu for _, cpu in runs) for runs in (decode_runs, check_runs))
    return decode, check, check / decode, check_cpu / decode_cpu


def benchmark(source: str, iterations: int, grain: float) -> dict[str, object]:
    data = phone_jpeg(source, grain)
    policy = PhotoPolicy()
    assert inspect_image(data, max_pixels=policy.max_pixels).quick_look, "the sharp photo needed a closer look"
    decode, check, ratio, cpu_ratio = compare(data, iterations)
    shaken = phone_jpeg(source, grain, blur_sigma=images.SHAKE_SIGMA)
    assert not inspect_image(shaken, max_pixels=policy.max_pixels).quick_look
    _, closer_check, closer_ratio, _ = compare(shaken, iterations)
    width, height = images.PHONE_SIZE
    return {
        "full_decode_ms": round(decode, 2),
        "check_ms": round(check, 2),
        "ratio": round(ratio, 3),
        "cpu_ratio": round(cpu_ratio, 3),
        "closer_look_check_ms": round(closer_check, 2),
        "closer_look_ratio": round(closer_ratio, 3),
        "megapixels": round(width * height / 1e6, 1),
        "jpeg_bytes": len(data),
        "source": source,
        "grain": grain,
        "iterations": iterations,
        "sha256": hashlib.sha256(data).hexdigest()[:12],
    }


def calibrate() -> dict[str, object]:
    policy = PhotoPolicy()
    judged: dict[str, dict[str, float]] = {}
    quick: dict[str, dict[str, float]] = {}
    for source in CALIBRATION_SOURCES:
        picture = images.phone_photo(source)
        judged[source], quick[source] = {}, {}
        for sigma in CALIBRATION_SIGMAS:
            blurred = picture.filter(ImageFilter.GaussianBlur(sigma)) if sigma else picture
            data = images.encode(blurred)
            judged[source][f"sigma{sigma}"] = round(inspect_image(data, max_pixels=policy.max_pixels,
                                                                  clearly_sharp=None).sharpness, 2)
            quick[source][f"sigma{sigma}"] = round(quick_sharpness(data), 2)
    return {
        "min_sharpness": policy.min_sharpness,
        "sharpness_12mp_judged_1000px": judged,
        "clearly_sharp": policy.clearly_sharp,
        "sharpness_12mp_quick_500px": quick,
        "phash": phash_distances(),
        "near_duplicate_distance": policy.near_duplicate_distance,
    }


def quick_sharpness(data: bytes) -> float:
    """The quick-look measure, whatever it decides (inspect_image stops at it only when clear)."""
    preview = decode_preview(open_image(data, max_pixels=PhotoPolicy().max_pixels), QUICK_SIDE)
    return sharpness(working_gray(preview, QUICK_SIDE), structure_factor=STRUCTURE_FACTOR[QUICK_SIDE])


def phash_distances() -> dict[str, object]:
    """Distances of altered copies to their original, and between different photos."""
    size = (1600, 1200)
    names = (*CALIBRATION_SOURCES, "motorcycle_right")

    def phash(picture: Image.Image, quality: int = 90) -> int:
        return inspect_image(images.encode(picture, quality=quality), max_pixels=50_000_000).phash

    pictures = {name: images.phone_photo(name, size) for name in names}
    originals = {name: phash(picture) for name, picture in pictures.items()}
    altered: dict[str, dict[str, int]] = {}
    for name, picture in pictures.items():
        variants = {"q60": phash(picture, 60), "half_size": phash(picture.resize((800, 600)))}
        for percent in (2, 5):
            dx, dy = size[0] * percent // 100, size[1] * percent // 100
            variants[f"crop{percent}pct"] = phash(picture.crop((dx, dy, *size)).resize(size), 85)
        altered[name] = {key: hamming_distance(originals[name], value) for key, value in variants.items()}
    between = sorted((hamming_distance(originals[a], originals[b]), f"{a}/{b}") for a, b in combinations(names, 2))
    return {"altered_copies": altered, "closest_different_pairs": between[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--source", default="astronaut", choices=images.SHARPNESS_SOURCES)
    parser.add_argument("--grain", type=float, default=0.0, help="noise sigma in grey levels")
    parser.add_argument("--calibrate", action="store_true")
    arguments = parser.parse_args()
    if arguments.calibrate:
        print(json.dumps(calibrate(), indent=2))
        return
    iterations = max(1, min(arguments.iterations, MAX_ITERATIONS))
    print(json.dumps(benchmark(arguments.source, iterations, arguments.grain)))


if __name__ == "__main__":
    main()
