"""Where a file: STORAGE_URL puts the evidence."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("url", "expected"), [
    ("file:///srv/evidence", "/srv/evidence"),
    ("file://localhost/srv/evidence", "/srv/evidence"),
    ("file://./var/objects", "./var/objects"),
    ("file://var/objects", "var/objects"),
    ("file://../shared/objects", "../shared/objects"),
])
def test_file_urls_keep_relative_paths_relative(url, expected):
    from accident_service.storage import local_path

    assert local_path(url) == expected


def test_the_embedded_default_stores_under_the_working_directory(tmp_path, monkeypatch):
    """The quick start's ``file://./var/objects`` must not become ``/var/objects``."""
    from accident_service.settings import load_settings
    from accident_service.storage import make_store

    monkeypatch.chdir(tmp_path)
    store = make_store(load_settings({"STORAGE_URL": "file://./var/objects", "DATA_DIR": "./var"}, environ={}))
    store.put("probe.txt", b"x", content_type="text/plain")
    assert (tmp_path / "var" / "objects" / "probe.txt").read_bytes() == b"x"


def test_checks_from_several_threads_at_once_never_collide(tmp_path):
    """A photo waiting out an outage checks the store before each try, beside /readyz: each check writes a probe
    file of its own (review: one shared name made a concurrent check fail, and a ready store look down)."""
    from concurrent.futures import ThreadPoolExecutor

    from accident_service.storage.local import LocalObjectStore

    store = LocalObjectStore(tmp_path / "objects", secret_key="k")

    def check_often(_worker: int) -> None:
        for _ in range(200):
            store.check()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check_often, range(4)))
    assert not [path for path in (tmp_path / "objects").iterdir() if path.name.startswith(".readyz")]
