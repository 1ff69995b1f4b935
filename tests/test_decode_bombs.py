"""Hostile JPEGs must never stall a worker: scan bombs are refused from their structure, and a
batch's decoding has a time limit that fails the slow file and still gives its batch mates rows.

The bombs are real JPEGs: a progressive JPEG from Pillow with one of its scans repeated (libjpeg
only warns about the repeated progression and decodes every copy, one pass over the image each).
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moodwatch.images import MAX_JPEG_SCANS, ImageRejected, decode_rgb, inspect_image
from moodwatch.settings import Settings
from tests.imagegen import face_like, huge_png_header, write_image


def progressive(side: int, mode: str = "RGB", **options) -> bytes:
    """A smooth picture as Pillow writes it progressive (libjpeg's default progression)."""
    rng = np.random.default_rng(side)
    small = rng.integers(0, 255, (8, 8, 3) if mode == "RGB" else (8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(buf, "JPEG", progressive=True,
                                                                     quality=90, **options)
    return buf.getvalue()


def scan_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan: its SOS segment and the entropy-coded data after it, up to the
    next marker (0xFF then neither 0x00, a restart marker nor a fill byte). Written apart from
    moodwatch.images, so the test does not trust the code it checks."""
    i, spans = 2, []
    while data[i + 1] != 0xDA:  # the header's segments, each with its length
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    while data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if data[i + 1] != 0xDA:  # a table between scans
            i = end
            continue
        j = end
        while not (data[j] == 0xFF and data[j + 1] not in (0x00, 0xFF, *range(0xD0, 0xD8))):
            j = data.index(b"\xff", j + 1)
        spans.append((i, j))
        i = j
    return spans


def with_scans(jpeg: bytes, total: int, slow: bool = False) -> bytes:
    """The JPEG with one scan repeated right after itself until it has `total` scans: its
    smallest scan (near-empty: a few bytes, still a pass over the image), or with slow its last
    DC scan (the DC refinement: a bit of real data for every block, a slower pass)."""
    spans = scan_spans(jpeg)
    if slow:  # Ss = Se = 0, after the scan header's component list: a DC scan
        dc = [s for s in spans if jpeg[s[0] + 5 + 2 * jpeg[s[0] + 4]:][:2] == b"\x00\x00"]
        start, end = dc[-1]
    else:
        start, end = min(spans, key=lambda s: s[1] - s[0])
    extra = total - len(spans)
    return jpeg[:end] + jpeg[start:end] * extra + jpeg[end:]


@pytest.fixture(scope="module")
def slow_jpeg() -> bytes:
    """A JPEG inside every limit (49 MP, MAX_JPEG_SCANS scans, 11 MB) that still takes a second
    or two to decode: ninety-odd copies of a full DC pass over 7000x7000 pixels."""
    return with_scans(progressive(7000, "L"), MAX_JPEG_SCANS, slow=True)


# -- scan bombs ---------------------------------------------------------------------------------

def test_normal_progressive_jpegs_pass_and_decode():
    for mode, scans in (("RGB", 10), ("L", 6)):  # libjpeg's default progressions
        data = progressive(200, mode)
        assert len(scan_spans(data)) == scans
        assert inspect_image(data).format == "jpeg"
        assert decode_rgb(data).shape == (200, 200, 3)
    # Restart markers (0xFFD0-D7) inside the entropy-coded data are no segments.
    data = progressive(600, restart_marker_blocks=4)
    assert data.count(b"\xff\xd0") > 0 and inspect_image(data).width == 600


def test_scan_bomb_refused_before_decoding():
    bomb = with_scans(progressive(1024), 20_000)
    assert len(bomb) < 600_000  # a small file: near-empty scans cost a few bytes each
    with pytest.raises(ImageRejected) as refused:
        inspect_image(bomb)
    assert refused.value.reason == ("JPEG with 20,000 scans (limit 100): refused, decoding that many can "
                                    "take minutes (a progressive JPEG has about 10)")
    with pytest.raises(ImageRejected, match="20,000 scans"):  # the worker's path decodes nothing
        decode_rgb(bomb)


def test_scan_limit_is_exact():
    base = progressive(256)
    assert inspect_image(with_scans(base, MAX_JPEG_SCANS)).format == "jpeg"
    with pytest.raises(ImageRejected, match=f"{MAX_JPEG_SCANS + 1} scans"):
        inspect_image(with_scans(base, MAX_JPEG_SCANS + 1))


def test_watcher_rejects_a_scan_bomb(tmp_path):
    from watcher.validation import check_arrival

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "bomb.jpg"
    path.write_bytes(with_scans(progressive(512), 5000))
    checked = check_arrival(str(path), inbox, 50 * 1024 * 1024, 50_000_000)
    assert checked is not None and "5,000 scans (limit 100)" in (checked.rejected or "")


# -- item 12a: a huge image's refusal quotes our limit only -------------------------------------

def test_image_past_pillows_guard_quotes_our_limit_and_its_size():
    with pytest.raises(ImageRejected) as refused:
        inspect_image(huge_png_header(20_000, 20_000))  # 400 MP: past Pillow's error threshold
    assert refused.value.reason == "image too large: 20000x20000 = 400,000,000 pixels (limit 50,000,000)"


def test_our_limit_decides_even_above_pillows():
    """Pillow's guard (179 MP) is not ours: with a higher limit of ours, the header is accepted
    (OpenCV decodes, not Pillow)."""
    info = inspect_image(huge_png_header(15_000, 15_000), max_pixels=300_000_000)
    assert (info.width, info.height) == (15_000, 15_000)


# -- the batch's time limit ---------------------------------------------------------------------

def _msg(path: Path, tag: str) -> dict:
    event_id = hashlib.sha256(tag.encode()).hexdigest()[:40]
    return {"event_id": event_id, "path": str(path), "received_at": datetime.now(UTC).isoformat()}


def test_time_limit_fails_the_slow_file_and_hands_back_the_rest(sqlite_url, tmp_path, tiny_model_dir,
                                                                slow_jpeg):
    """One decode thread, held by the slow file: at the limit it is given up with a `failed` row,
    the files whose decode never began (a copy of one of them too) go back to the queue, and a
    refusal found before decoding keeps its row. Sent again, they are classified."""
    from sqlalchemy import select

    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade
    from db.models import Result
    from moodwatch.registry import Registry
    from worker.inference import Classifier
    from worker.processing import process_batch

    upgrade(sqlite_url)
    sessions = make_sessionmaker(make_engine(sqlite_url))
    settings = Settings(data_dir=tmp_path / "data", model_dir=tiny_model_dir, batch_time_limit=0.1)
    inbox = settings.inbox_dir
    slow = inbox / "slow.jpg"
    slow.parent.mkdir(parents=True)
    slow.write_bytes(slow_jpeg)
    a = write_image(inbox / "a.jpg", face_like("happy", 1))
    copy = inbox / "a-copy.jpg"
    copy.write_bytes(a.read_bytes())
    b = write_image(inbox / "b.jpg", face_like("sad", 2))
    hidden = write_image(inbox / ".hidden.jpg", face_like("sad", 3))
    messages = [_msg(p, p.name) for p in (slow, a, copy, b, hidden)]
    classifier = Classifier(Registry(tiny_model_dir).require_current(), batch_size=8, decode_threads=1)
    try:
        sink: list[dict] = []
        counts = process_batch(messages, settings, sessions, classifier, move_files=False, retry_sink=sink)
        assert counts == {"failed": 2, "requeued": 3}
        assert sorted(Path(m["path"]).name for m in sink) == ["a-copy.jpg", "a.jpg", "b.jpg"]
        # Sent again (a later job, with the default limit): classified.
        normal = Settings(data_dir=tmp_path / "data", model_dir=tiny_model_dir)
        assert process_batch(sink, normal, sessions, classifier, move_files=False) == {"classified": 3}
    finally:
        classifier.close()
    with sessions() as s:
        rows = {r.file_name: r for r in s.scalars(select(Result))}
    assert set(rows) == {"slow.jpg", "a.jpg", "a-copy.jpg", "b.jpg", ".hidden.jpg"}
    assert rows["slow.jpg"].status == "failed"
    assert rows["slow.jpg"].error.startswith("decoding took longer than the batch's time limit (0.1 s)")
    assert rows[".hidden.jpg"].status == "failed" and "hidden" in rows[".hidden.jpg"].error
    assert rows["a-copy.jpg"].duplicate_of == rows["a.jpg"].id
    assert all(rows[n].status == "classified" for n in ("a.jpg", "a-copy.jpg", "b.jpg"))


def test_celery_limits_back_the_batch_limit_up_within_the_visibility_timeout():
    from moodwatch.queue import classify_time_limits

    settings = Settings()
    soft, hard = classify_time_limits(settings)
    assert settings.batch_time_limit < soft < hard < settings.visibility_timeout


@pytest.mark.slow
def test_worker_process_gives_a_slow_file_a_failed_row_and_its_batch_mates_theirs(
        tmp_path, tiny_model_dir, redis_url, pg_url, slow_jpeg):
    from db.migrate import upgrade
    from moodwatch.queue import CLASSIFY_TASK, make_celery
    from tests.procs import Rows, service_env, start_worker, stop, wait_for

    upgrade(pg_url)
    inbox = tmp_path / "in"
    warm = [write_image(inbox / f"warm_{i}.jpg", face_like("happy", i)) for i in range(2)]
    mates = [write_image(inbox / f"mate_{i}.jpg", face_like("sad" if i % 2 else "happy", 10 + i))
             for i in range(4)]
    slow = inbox / "slow.jpg"
    slow.write_bytes(slow_jpeg)
    env = service_env(broker_url=redis_url, database_url=pg_url, model_dir=tiny_model_dir,
                      data_dir=tmp_path / "data", inbox=inbox, batch_time_limit="0.25")
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, concurrency=1)
    rows = Rows(pg_url)
    app = make_celery(Settings(broker_url=redis_url))
    try:
        # A first batch, so the timed one does not wait on the pool process's start.
        app.send_task(CLASSIFY_TASK, args=[[_msg(p, p.name) for p in warm]], kwargs={"move_files": False})
        wait_for(lambda: rows.count() >= len(warm), 120, "the warm-up batch", log)
        # The batch mates first: they take the decode threads before the slow file does.
        batch = [_msg(p, p.name) for p in (*mates, slow)]
        app.send_task(CLASSIFY_TASK, args=[batch], kwargs={"move_files": False})
        wait_for(lambda: rows.count() >= len(warm) + len(batch), 60, "a row for every file", log)
        found = {Path(r.path).name: r for r in rows.all()}
    finally:
        app.close()
        stop(worker)
        rows.close()
    assert len(found) == len(warm) + len(mates) + 1
    assert found["slow.jpg"].status == "failed"
    assert "longer than the batch's time limit (0.25 s)" in found["slow.jpg"].error
    assert all(found[p.name].status == "classified" for p in (*warm, *mates))
