"""Process one batch job: check every item, skip what is recorded, reuse known duplicates,
classify, write rows, then move the files.

Each step is a room of its own: worker.items (parse each item, skip what is recorded),
worker.triage and worker.received (the checks before the model, by transport),
worker.classification (classify each new bytes once), worker.recording (one transaction),
worker.moves. Plain functions with their dependencies passed in, so tests call them without
Celery, and with any ClassifierLike (no model needed for the database and de-duplication).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import sessionmaker

from moodwatch.claims import ClaimStore
from moodwatch.files import printable
from moodwatch.outcome import Outcome
from moodwatch.settings import Settings
from worker.classification import ClassifierLike, classify, hand_back_unstarted
from worker.items import parse_item, skip_recorded
from worker.moves import move_recorded
from worker.received import release_claims
from worker.recording import record
from worker.triage import triage

log = logging.getLogger("moodwatch.worker")


def process_batch(
    messages: list[Any],
    settings: Settings,
    sessions: sessionmaker,
    classifier: ClassifierLike,
    move_files: bool = True,
    dedupe: bool = True,
    retry_sink: list[dict[str, Any]] | None = None,
    claims: ClaimStore | None = None,
) -> dict[str, int]:
    """Classify a batch and record one row per event; returns counts by status.

    Safe to run twice on the same messages: recorded events are skipped and inserts ignore
    event ids that are already there, so a redelivered job adds no second row. Items to try
    again later (a file this worker cannot reach, one not decoded in time) are added to
    `retry_sink` for the caller to send; without one they get their rows now. With `claims`
    (broker transport) the bytes come from Redis, are deleted once their rows are committed, and
    no file is moved here: the watcher, which holds the inbox, moves it when it sees the row.
    """
    if len(messages) > settings.batch_size:
        # The watcher never sends more; a larger job is forged or misconfigured, and its files,
        # if real, are still in the inbox, where the watcher's rescan sends them again.
        log.error("refused a job of %d items: more than MOODWATCH_BATCH_SIZE=%d (give the watcher "
                  "and the workers the same batch size)", len(messages), settings.batch_size)
        return {"refused": len(messages)}
    now = datetime.now(UTC)
    jobs, bad, recorded = skip_recorded([parse_item(m, now) for m in messages], sessions)
    if not jobs and not bad:
        release_claims(claims, recorded)  # a redelivery, or a resend of a file recorded meanwhile
        return {"skipped": len(messages)}

    checked = triage(jobs, settings, sessions, now, hand_back=retry_sink is not None, claims=claims)
    batch = classify(checked.jobs, settings, sessions, classifier, dedupe)
    back = hand_back_unstarted(batch, retry_sink is not None, settings, now)
    if retry_sink is not None:
        retry_sink.extend(checked.handed_back + back.items)
    written = record(replace(batch, rows=bad + checked.rows + batch.rows + back.rows), sessions, dedupe)
    # After the commit; rows with ids of their own (malformed, mismatched) release no claim.
    release_claims(claims, recorded | ({r.event_id for r in written.rows} & {j.event_id for j in jobs}))
    _log_outcomes(written.rows)
    if move_files and claims is None:
        # After the commit: a file leaves the inbox only once its row exists, and only the
        # rows this run added move files (a redelivered twin running at once moves nothing).
        move_recorded([r for r in written.rows if r.event_id in written.added], settings, sessions)
    return _counts(written.rows, retried=len(checked.handed_back), requeued=len(back.items),
                   lost=checked.lost)


def _log_outcomes(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        said = f"{o.label} ({o.confidence:.0%})" if o.label else f"({o.error})"
        log.info("%s: %s %s", printable(o.path), o.status.value, printable(said))


def _counts(outcomes: list[Outcome], **more: int) -> dict[str, int]:
    """Rows by status (the plain words), and the other figures the task reports when not zero."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    counts.update({name: n for name, n in more.items() if n})
    return counts
