"""Broker transport (MOODWATCH_TRANSPORT=broker): no path is ever opened, the inbox is on the
watcher's machine. The bytes come from the job's claim in Redis and must have the size and
sha256 the message says (moodwatch.claims); they are deleted once their rows are committed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from datetime import datetime

from moodwatch.admission import too_large
from moodwatch.claims import ClaimStore
from moodwatch.files import printable
from moodwatch.jobs import claim_key
from moodwatch.outcome import Outcome
from moodwatch.queue import BROKER_ERRORS
from moodwatch.settings import Settings
from moodwatch.vocab import Status
from worker.items import Job, Triage, name_refusal, refused_row, row_of

log = logging.getLogger("moodwatch.worker")


class _Lost:
    """A claim whose bytes are gone (expired, a Redis restarted empty): no row; the watcher, which
    still holds the file, sees the key gone with no row and sends the file again."""


LOST = _Lost()


def receive(job: Job, claims: ClaimStore, settings: Settings, now: datetime) -> Job | Outcome | _Lost:
    """The job with the bytes its claim holds, checked against the message's size and sha256;
    its row when they cannot be classified; LOST when they are gone. The size is asked first, so
    no claim larger than MOODWATCH_MAX_FILE_BYTES is ever fetched."""
    item = job.item
    if item.claim is None:
        return row_of(job, status=Status.FAILED, classified_at=now, error="refused: a job without its bytes "
                      "(this worker has MOODWATCH_TRANSPORT=broker: give the watcher the same)")
    size = claims.size(item.claim)
    if size == 0:
        return LOST
    if size > settings.max_file_bytes:
        return row_of(job, status=Status.REJECTED, classified_at=now,
                      error=too_large(size, settings.max_file_bytes))
    data = claims.get(item.claim) if size == item.size else b""
    if data is None:
        return LOST
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != item.size or sha != item.sha256:
        log.warning("%s: the bytes received do not match the job (forged or damaged); refused",
                    printable(job.path))
        return refused_row(item.wire(), "mismatch", "refused: the bytes received do not have the job's "
                           f"size and sha256 ({len(data) or size:,} bytes, not {item.size:,})", now)
    return replace(job, sha256=sha, data=data)


def triage_claims(jobs: list[Job], claims: ClaimStore, settings: Settings, now: datetime) -> Triage:
    """Refuse what the watcher would not send, take the rest's bytes from their claims."""
    rows: list[Outcome] = []
    taken: list[Job] = []
    lost = 0
    for job in jobs:
        reason = name_refusal(job.path)
        got = row_of(job, status=Status.FAILED, error=reason, classified_at=now) if reason \
            else receive(job, claims, settings, now)
        if reason:
            log.warning("%s: %s", printable(job.path), reason)
        if got is LOST:
            log.warning("%s: its bytes are no longer in Redis (expired, or Redis restarted); the "
                        "watcher sends it again", printable(job.path))
            lost += 1
        elif isinstance(got, Job):
            taken.append(got)
        else:
            rows.append(got)
    return Triage(rows=rows, jobs=taken, lost=lost)


def release_claims(claims: ClaimStore | None, event_ids: set[str]) -> None:
    """Delete the bytes of files whose rows are committed. Failing that (Redis away), they expire."""
    if claims is None or not event_ids:
        return
    try:
        claims.delete(claim_key(e) for e in sorted(event_ids))
    except BROKER_ERRORS as exc:
        log.warning("could not delete the bytes of %d recorded file(s) from Redis (%s); they expire",
                    len(event_ids), exc)
