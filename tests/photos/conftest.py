"""Session-wide test photographs: built once, kept in memory and on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.photos import images

MEDIUM_SIZE = (1600, 1200)  # big enough to pass, cheap to build


class PhotoFactory:
    """Builds test images on first use; written under the session's tmp dir."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._memo: dict[str, bytes] = {}

    def get(self, key: str, build: Callable[[], bytes]) -> bytes:
        if key not in self._memo:
            self._memo[key] = build()
            (self.directory / key).write_bytes(self._memo[key])
        return self._memo[key]

    def phone_jpeg(self, name: str, *, blur_sigma: float = 0.0) -> bytes:
        """12 MP JPEG at quality 90, optionally shaken."""
        return self.get(
            f"{name}-12mp-blur{blur_sigma:g}.jpg",
            lambda: images.encode(images.phone_photo(name, blur_sigma=blur_sigma)),
        )

    def medium_jpeg(self, name: str, quality: int = 90) -> bytes:
        return self.get(
            f"{name}-medium-q{quality}.jpg",
            lambda: images.encode(images.phone_photo(name, MEDIUM_SIZE), quality=quality),
        )

    def png_bomb(self) -> bytes:
        return self.get("bomb-20000x20000.png", images.png_bomb)


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> PhotoFactory:
    return PhotoFactory(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def start_live(wechat, wechat_settings_overrides, clock):
    """Start the app on a live server wired to the emulator, with extra settings; returns its runtime.

    For tests that need settings the shared ``live_app`` fixture does not have
    (a small byte cap, a short checklist, S3 storage).
    """
    from accident_service import create_app
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings
    from tests.support.live import LiveServer

    started = []

    def start(**overrides: object):
        runtime = build_runtime(load_settings({**wechat_settings_overrides, **overrides}, environ={}), clock=clock)
        server = LiveServer(create_app(runtime=runtime)).start()
        started.append((server, runtime))
        wechat.callback_url = server.url + "/wechat"
        return runtime

    yield start
    for server, runtime in reversed(started):
        server.stop()
        runtime.close()
