"""Real worker processes, real brokers (the machine's Redis and an embedded one), real databases."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from db.migrate import upgrade
from moodwatch.files import event_id_for
from moodwatch.queue import CLASSIFY_TASK, RETRAIN_TASK, make_celery
from moodwatch.settings import Settings
from tests.imagegen import encode, face_like, write_image
from tests.procs import CuttableProxy, Rows, service_env, start_worker, stop, wait_for

pytestmark = pytest.mark.slow


def _images(folder, n, start=0):
    return [write_image(folder / f"img_{i}.jpg", face_like("happy" if i % 2 else "sad", i))
            for i in range(start, start + n)]


def _enqueue(broker: str, files, batch: int, tag: str = "t") -> None:
    app = make_celery(Settings(broker_url=broker))
    now = datetime.now(UTC).isoformat()
    msgs = [{"event_id": hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()[:40], "path": str(p),
             "received_at": now} for i, p in enumerate(files)]
    for i in range(0, len(msgs), batch):
        app.send_task(CLASSIFY_TASK, args=[msgs[i : i + batch]], kwargs={"move_files": False})
    app.close()


@pytest.fixture
def embedded_broker(tmp_path):
    from moodwatch.broker import embedded_url, start_embedded

    client = start_embedded(tmp_path / "redis" / "redis.db")
    yield embedded_url(client)
    client.shutdown()


def _assert_one_row_each(rows: Rows, files) -> None:
    found = rows.all()
    per_path = Counter(r.path for r in found)
    assert set(per_path) == {str(p) for p in files}
    assert all(n == 1 for n in per_path.values()), [p for p, n in per_path.items() if n > 1]
    assert all(r.status == "classified" and r.label in ("happy", "sad") for r in found)


@pytest.mark.parametrize("stack", ["real", "embedded"])
def test_worker_process_classifies_enqueued_jobs(stack, request, tmp_path, tiny_model_dir):
    if stack == "real":
        broker, db = request.getfixturevalue("redis_url"), request.getfixturevalue("pg_url")
    else:
        broker, db = request.getfixturevalue("embedded_broker"), f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(db)
    files = _images(tmp_path / "in", 40)
    env = service_env(broker_url=broker, database_url=db, model_dir=tiny_model_dir,
                      data_dir=tmp_path / "data", inbox=tmp_path / "in")
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, concurrency=2)
    rows = Rows(db)
    try:
        _enqueue(broker, files, batch=8)
        wait_for(lambda: rows.count() >= len(files), 120, "all rows", log)
        _assert_one_row_each(rows, files)
    finally:
        stop(worker)
        rows.close()


def test_sigkill_mid_batch_every_file_gets_one_row(tmp_path, tiny_model_dir, redis_url, pg_url):
    upgrade(pg_url)
    files = _images(tmp_path / "in", 24)
    env = service_env(broker_url=redis_url, database_url=pg_url, model_dir=tiny_model_dir,
                      data_dir=tmp_path / "data", inbox=tmp_path / "in", visibility_timeout=4)
    # The doomed worker reaches the database through a proxy that is cut once it is up, so it
    # holds the batch without writing a row until it is killed, however fast it classifies
    # (a race against its model's loading, before: a LiteRT model loads in about a second).
    proxy = CuttableProxy(5432)
    doomed_env = {**env, "MOODWATCH_DATABASE_URL": pg_url.replace(":5432/", f":{proxy.port}/")}
    log = tmp_path / "worker.log"
    rows = Rows(pg_url)
    first = start_worker(doomed_env, log, concurrency=1, name="doomed")
    try:
        wait_for(lambda: "ready" in log.read_text(errors="replace"), 90, "doomed worker up", log)
        proxy.cut()
        _enqueue(redis_url, files, batch=24)
        wait_for(lambda: "received" in log.read_text(errors="replace"), 60, "job taken", log)
        time.sleep(1)
        assert rows.count() == 0
        stop(first, signal.SIGKILL)
        assert rows.count() == 0
        second = start_worker(env, log, concurrency=1, name="rescuer")
        try:
            wait_for(lambda: rows.count() >= len(files), 120, "redelivered rows", log)
            _assert_one_row_each(rows, files)
        finally:
            stop(second)
    finally:
        stop(first, signal.SIGKILL)
        proxy.close()
        rows.close()


def test_database_outage_during_batches_is_retried(tmp_path, tiny_model_dir, redis_url, pg_url):
    upgrade(pg_url)
    proxy = CuttableProxy(5432)
    proxied = pg_url.replace(":5432/", f":{proxy.port}/")
    files = _images(tmp_path / "in", 48)
    env = service_env(broker_url=redis_url, database_url=proxied, model_dir=tiny_model_dir,
                      data_dir=tmp_path / "data", inbox=tmp_path / "in")
    log = tmp_path / "worker.log"
    rows = Rows(pg_url)  # the test reads around the proxy
    worker = start_worker(env, log, concurrency=1)
    try:
        _enqueue(redis_url, files[:8], batch=8, tag="warm")
        wait_for(lambda: rows.count() >= 8, 90, "first batch", log)
        proxy.cut()
        _enqueue(redis_url, files[8:], batch=8, tag="cut")
        wait_for(lambda: "Retry in" in log.read_text(errors="replace"), 60, "a retry", log)
        time.sleep(3)
        assert rows.count() == 8  # nothing could be written while the database was away
        proxy.restore()
        wait_for(lambda: rows.count() >= len(files), 120, "all rows after the outage", log)
        time.sleep(1)
        _assert_one_row_each(rows, files)
    finally:
        stop(worker)
        proxy.close()
        rows.close()


def test_name_that_is_not_utf8_gets_its_row_and_its_batch_mates_too(tmp_path, tiny_model_dir, redis_url,
                                                                     pg_url):
    import os

    from watcher.validation import check_arrival

    upgrade(pg_url)
    data = tmp_path / "data"
    settings = Settings(data_dir=data, model_dir=tiny_model_dir)
    inbox = settings.inbox_dir
    odd = write_image(Path(os.fsdecode(os.fsencode(inbox) + b"/sm\xefle \xff.jpg")), face_like("happy", 7))
    odd_bytes = odd.read_bytes()
    files = [*_images(inbox, 2), odd, *_images(inbox, 2, start=2)]
    checked = [check_arrival(str(p), inbox, settings.max_file_bytes, settings.max_pixels) for p in files]
    now = datetime.now(UTC).isoformat()
    msgs = [{"event_id": c.event_id, "path": c.path, "sha256": c.sha256, "received_at": now}
            for c in checked]
    env = service_env(broker_url=redis_url, database_url=pg_url, model_dir=tiny_model_dir, data_dir=data)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    rows = Rows(pg_url)
    try:
        app = make_celery(Settings(broker_url=redis_url))
        app.send_task(CLASSIFY_TASK, args=[msgs])
        app.close()
        wait_for(lambda: rows.count() >= len(files), 120, "a row for every file", log)
        found = {r.event_id: r for r in rows.all()}
    finally:
        stop(worker)
        rows.close()
    assert len(found) == len(files) and all(r.status == "classified" for r in found.values())
    row = found[checked[2].event_id]
    assert row.path_bytes == os.fsencode(odd) and row.file_name == "sm\\xefle \\xff.jpg"
    assert Path(row.stored_path).parent == settings.processed_dir / row.label
    assert Path(row.stored_path).read_bytes() == odd_bytes
    assert not any(p.exists() for p in files)  # every file left the inbox, none lost


def _checked_messages(files, settings: Settings) -> list[dict]:
    """The messages the watcher sends for these files, checked as they are now."""
    from watcher.validation import check_arrival

    now = datetime.now(UTC).isoformat()
    out = []
    for p in files:
        c = check_arrival(str(p), settings.inbox_dir, settings.max_file_bytes, settings.max_pixels)
        out.append({"event_id": c.event_id, "path": c.path, "sha256": c.sha256, "received_at": now})
    return out


def _send(broker: str, msgs: list[dict]) -> None:
    app = make_celery(Settings(broker_url=broker))
    app.send_task(CLASSIFY_TASK, args=[msgs])
    app.close()


def test_worker_reads_only_the_regular_file_it_was_sent(tmp_path, tiny_model_dir, redis_url, pg_url):
    import hashlib
    import os

    upgrade(pg_url)
    data = tmp_path / "data"
    settings = Settings(data_dir=data, model_dir=tiny_model_dir)
    inbox = settings.inbox_dir
    good, linked, piped, swapped = _images(inbox, 4)
    msgs = _checked_messages([good, linked, piped, swapped], settings)
    # After the watcher's checks: a link to a file outside the inbox, a FIFO, other bytes.
    outside = write_image(tmp_path / "outside" / "secret.jpg", face_like("sad", 99))
    outside_sha = hashlib.sha256(outside.read_bytes()).hexdigest()
    linked.unlink()
    linked.symlink_to(outside)
    piped.unlink()
    os.mkfifo(piped)
    other = write_image(tmp_path / "other.jpg", face_like("happy", 98))
    os.replace(other, swapped)
    # A sparse file far over the size limit, sent with its own (true) event id.
    big = inbox / "big.jpg"
    with open(big, "wb") as fh:
        fh.write(encode(face_like("happy", 5), ".jpg"))
        fh.truncate(1_500_000_000)
    big_msg = {"event_id": event_id_for(str(big), os.lstat(big)), "path": str(big),
               "received_at": datetime.now(UTC).isoformat()}
    later = _images(inbox, 2, start=10)
    env = service_env(broker_url=redis_url, database_url=pg_url, model_dir=tiny_model_dir, data_dir=data)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    rows = Rows(pg_url)
    try:
        _send(redis_url, [*msgs, big_msg])
        later_msgs = _checked_messages(later, settings)
        _send(redis_url, later_msgs)  # not stalled behind the FIFO
        wait_for(lambda: rows.count() >= 7, 120, "a row for every event", log)
        time.sleep(1)
        found = {r.event_id: r for r in rows.all()}
    finally:
        stop(worker)
        rows.close()
    assert len(found) == 7
    assert found[msgs[0]["event_id"]].status == "classified"
    for m in msgs[1:3]:
        assert found[m["event_id"]].status != "classified", found[m["event_id"]].error
    assert all(r.sha256 != outside_sha for r in found.values())
    assert outside.is_file() and not any(p.is_symlink() for p in (data / "processed").rglob("*"))
    # Whatever was recorded, the hash is that of the bytes the worker read (and kept).
    for r in found.values():
        if r.sha256 is not None:
            assert hashlib.sha256(Path(r.stored_path).read_bytes()).hexdigest() == r.sha256, r.file_name
    assert found[big_msg["event_id"]].status == "rejected" and "too large" in found[big_msg["event_id"]].error
    assert all(found[m["event_id"]].status == "classified" for m in later_msgs)


def test_worker_checks_every_field_and_a_bad_item_fails_alone(tmp_path, tiny_model_dir, redis_url, pg_url):
    import hashlib
    import os

    from db.engine import make_engine, make_sessionmaker
    from watcher.submit import submit_paths

    upgrade(pg_url)
    data = tmp_path / "data"
    settings = Settings(data_dir=data, model_dir=tiny_model_dir, batch_size=16, database_url=pg_url)
    inbox = settings.inbox_dir
    photo, photo2 = _images(inbox, 2)
    text = inbox / "text.jpg"
    text.write_text("not a photo")
    partial = inbox / "download.jpg.part"
    partial.write_bytes(encode(face_like("sad", 3), ".jpg"))
    curated = write_image(data / "happy" / "curated.jpg", face_like("happy", 4))
    elsewhere = write_image(tmp_path / "share" / "by-hand.jpg", face_like("sad", 5))
    sent: list[list[dict]] = []
    submit_paths([elsewhere], settings, sent.append, make_sessionmaker(make_engine(pg_url)))
    photo_sha = hashlib.sha256(photo.read_bytes()).hexdigest()
    now = datetime.now(UTC).isoformat()

    def item(name: str, path, **kw) -> dict:
        return {"event_id": hashlib.sha256(name.encode()).hexdigest()[:40], "path": str(path),
                "received_at": now, **kw}

    good = [item("photo", photo, sha256="0" * 64), item("text", text, sha256=photo_sha),
            item("photo2", photo2, rejected="forged"), item("part", partial), item("curated", curated),
            item("gone", inbox / "gone.jpg", attempts=-300), *sent[0]]
    malformed = [{"path": str(photo)}, item("date", photo, received_at="yesterday-ish"),
                 item("nul", str(photo) + "\x00.jpg"), {"event_id": 7, "path": ["a"]}]
    oversized = [item(f"many{i}", photo) for i in range(17)]
    env = service_env(broker_url=redis_url, database_url=pg_url, model_dir=tiny_model_dir, data_dir=data,
                      batch_size=16)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    rows = Rows(pg_url)
    try:
        _send(redis_url, oversized)
        _send(redis_url, [*good[:3], *malformed[:2], *good[3:], *malformed[2:]])
        wait_for(lambda: rows.count() >= len(good) + len(malformed), 120, "a row per item", log)
        time.sleep(2)
        found = rows.all()
    finally:
        stop(worker)
        rows.close()
    by_id = {r.event_id: r for r in found}
    assert len(found) == len(good) + len(malformed)  # nothing from the oversized job
    status = {name: by_id[item(name, "x")["event_id"]] for name in ("photo", "text", "photo2", "part",
                                                                      "curated", "gone")}
    assert status["photo"].status == "classified" and status["photo"].sha256 == photo_sha
    assert status["text"].status == "rejected" and status["text"].duplicate_of is None
    assert status["photo2"].status == "classified" and not (data / "rejected" / photo2.name).exists()
    assert status["part"].status == "failed" and partial.exists()
    assert status["curated"].status == "failed" and curated.exists()
    assert status["gone"].status == "failed" and "tried by 3" in status["gone"].error
    assert log.read_text(errors="replace").count("handed back to the queue") <= 2
    assert by_id[sent[0][0]["event_id"]].status == "classified" and elsewhere.exists()
    bad = [r for r in found if "malformed" in (r.error or "")]
    assert len(bad) == len(malformed) and all(r.status == "failed" for r in bad)
    assert "refused" in log.read_text(errors="replace") and os.path.exists(photo) is False


def test_running_watcher_resends_files_whose_job_was_lost(tmp_path, tiny_model_dir, redis_url, pg_url):
    import redis

    from db.engine import make_engine, make_sessionmaker
    from watcher.sender import celery_sender
    from watcher.service import Watcher

    upgrade(pg_url)
    data = tmp_path / "data"
    settings = Settings(data_dir=data, model_dir=tiny_model_dir, broker_url=redis_url, database_url=pg_url,
                        settle_seconds=0.2, batch_wait=0.1, rescan_seconds=1, resend_seconds=3)
    files = _images(settings.inbox_dir, 6)
    watcher = Watcher(settings, celery_sender(settings), make_sessionmaker(make_engine(pg_url)))
    stop_watching = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop_watching,))
    thread.start()
    env = service_env(broker_url=redis_url, database_url=pg_url, model_dir=tiny_model_dir, data_dir=data)
    log = tmp_path / "worker.log"
    rows = Rows(pg_url)
    worker = None
    try:
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: client.llen("classify") > 0 and not watcher.backlog().pending, 30, "jobs queued")
        time.sleep(0.5)
        client.flushdb()  # the jobs are lost, as a broker restart without persistence loses them
        client.close()
        worker = start_worker(env, log)
        wait_for(lambda: rows.count() >= len(files), 120, "rows for the files of the lost jobs", log)
        time.sleep(2)
        _assert_one_row_each(rows, files)
    finally:
        stop_watching.set()
        thread.join(timeout=30)
        if worker is not None:
            stop(worker)
        rows.close()


def test_a_pool_process_holds_off_sigterm_while_a_batch_runs(monkeypatch):
    """systemd's stop (and `kill -- -PGID`) signals every process at once: a pool process that
    died between a batch's commit and its moves would leave recorded files in the inbox."""
    from celery.signals import task_postrun, task_prerun

    import worker.tasks
    from worker.tasks import celery_app

    monkeypatch.setattr(worker.tasks, "_process", None)  # celery_app's process state goes with the test
    app = celery_app(Settings(broker_url="redis://127.0.0.1:1/0"))  # configured only: nothing connects
    classify_batch, retrain = app.tasks[CLASSIFY_TASK], app.tasks[RETRAIN_TASK]
    before = signal.getsignal(signal.SIGTERM)
    try:
        # Not a pool process (a solo pool's main process): Celery's own handler stays.
        task_prerun.send(sender=classify_batch, task_id="t", task=classify_batch, args=[], kwargs={})
        assert signal.getsignal(signal.SIGTERM) is before
        monkeypatch.setattr(worker.tasks._process, "pool_process", True)
        task_prerun.send(sender=classify_batch, task_id="t", task=classify_batch, args=[], kwargs={})
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        task_postrun.send(sender=classify_batch, task_id="t", task=classify_batch, args=[], kwargs={})
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        task_prerun.send(sender=retrain, task_id="r", task=retrain, args=[], kwargs={})
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a retrain may be cut: nothing half-done
    finally:
        signal.signal(signal.SIGTERM, before)
        app.close()
