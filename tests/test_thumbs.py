"""Thumbnails are written the way every file the service writes is: whole, synced, then renamed."""

import os
import threading

from moodwatch.settings import Settings
from tests.imagegen import face_like, write_image
from web import thumbs


def test_thumbnail_is_synced_before_it_is_renamed(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    src = write_image(settings.data_dir / "processed" / "sad" / "a.jpg", face_like("sad", 1, 300))
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[0])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[0])
    out = thumbs.thumbnail(settings, 7, str(src))
    assert out is not None and out.read_bytes()[:3] == b"\xff\xd8\xff"
    assert events[:2] == ["fsync", "replace"]


def test_threads_making_one_thumbnail_never_share_a_temporary(tmp_path):
    """The review page serves in a thread pool: a temporary named by the process id alone was
    shared by two requests for the same thumbnail."""
    settings = Settings(data_dir=tmp_path / "data", model_dir=tmp_path / "models")
    src = write_image(settings.data_dir / "processed" / "sad" / "a.jpg", face_like("sad", 1, 300))
    results, errors = [], []
    barrier = threading.Barrier(8)

    def make():
        barrier.wait()
        try:
            results.append(thumbs.thumbnail(settings, 7, str(src)))
        except Exception as exc:  # noqa: BLE001 - the test reports any
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(r is not None for r in results)
    assert [p.name for p in (settings.data_dir / ".thumbs").iterdir()] == ["7.jpg"]
