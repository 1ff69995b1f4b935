"""process_batch with the real model (the tiny one trained for the suite), against real databases,
without Celery. Its database, de-duplication and move logic alone: tests/test_processing_fake.py."""

import hashlib
from datetime import UTC, datetime

from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Result
from moodwatch.registry import Registry
from tests.imagegen import encode, face_like, write_image
from worker.inference import Classifier
from worker.processing import process_batch


def _msg(path, i):
    event_id = hashlib.sha256(f"ev-{i}".encode()).hexdigest()[:40]  # ids are checked: 40 hex digits
    return {"event_id": event_id, "path": str(path), "received_at": datetime.now(UTC).isoformat()}


def test_batch_with_bad_files_and_duplicates(db_url, settings, tmp_path):
    upgrade(db_url)
    sessions = make_sessionmaker(make_engine(db_url))
    classifier = Classifier(Registry(settings.model_dir).require_current(), batch_size=4)
    inbox = settings.inbox_dir
    good = [write_image(inbox / f"g{i}.jpg", face_like("happy" if i % 2 else "sad", i)) for i in range(6)]
    twin = inbox / "twin.jpg"
    twin.write_bytes(good[0].read_bytes())
    text = inbox / "text.jpg"
    text.write_text("not an image")
    cut = inbox / "cut.png"
    cut.write_bytes(encode(face_like("sad", 1, 120))[:200])
    missing = inbox / "gone.jpg"
    files = [*good, twin, text, cut, missing]
    messages = [_msg(p, i) for i, p in enumerate(files)]

    counts = process_batch(messages, settings, sessions, classifier, move_files=False)
    assert counts == {"classified": 7, "rejected": 2, "failed": 1}

    with sessions() as s:
        rows = {r.file_name: r for r in s.scalars(select(Result))}
    assert len(rows) == len(files)
    for p in good:
        r = rows[p.name]
        assert r.status == "classified" and r.label in ("happy", "sad")
        assert 0.5 <= r.confidence <= 1 and r.model_version == classifier.version.name
        assert abs(r.confidence - (r.score if r.label == "sad" else 1 - r.score)) < 1e-6
    dup = rows["twin.jpg"]
    assert dup.duplicate_of == rows["g0.jpg"].id and dup.label == rows["g0.jpg"].label
    assert "signature" in rows["text.jpg"].error and rows["text.jpg"].status == "rejected"
    assert rows["cut.png"].status == "rejected" and "truncated" in rows["cut.png"].error
    assert rows["gone.jpg"].status == "failed" and "not found" in rows["gone.jpg"].error

    # Redelivery of the same job adds nothing.
    assert process_batch(messages, settings, sessions, classifier, move_files=False) == {"skipped": 10}
    with sessions() as s:
        assert len(list(s.scalars(select(Result)))) == len(files)

    # The same bytes in a later job refer to the first row too.
    again = inbox / "again.jpg"
    again.write_bytes(good[3].read_bytes())
    process_batch([_msg(again, 99)], settings, sessions, classifier, move_files=False)
    with sessions() as s:
        row = s.scalars(select(Result).where(Result.file_name == "again.jpg")).one()
        assert row.duplicate_of == rows["g3.jpg"].id and row.status == "classified"
    classifier.close()


def test_worker_picks_up_a_newly_promoted_model(tmp_path, tiny_model_dir):
    import shutil

    from moodwatch.registry import Version
    from worker.inference import ModelCache

    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    registry = Registry(models)
    first = registry.require_current()
    cache = ModelCache(registry, batch_size=4, check_every=0)
    assert cache.get().version == first
    newer = models / "vzz-newer"
    shutil.copytree(first.path, newer)
    registry.promote(Version("vzz-newer", newer))
    assert cache.get().version.name == "vzz-newer"
