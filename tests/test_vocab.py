"""The vocabularies named once (moodwatch.vocab) keep the plain words on disk and on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from db.repository import storable
from moodwatch.outcome import Outcome
from moodwatch.vocab import STATUSES, Regime, Status


def test_statuses_are_the_plain_words_in_order():
    assert STATUSES == ("classified", "rejected", "failed")
    assert all(type(s) is str for s in STATUSES)  # click's Choice would list an Enum's names


def test_a_row_records_the_plain_word_of_its_status():
    outcome = Outcome.new("e1", "/in/a.jpg", datetime.now(UTC), status="rejected")
    assert outcome.status is Status.REJECTED  # the member in the code
    stored = storable(outcome)["status"]
    assert stored == "rejected" and type(stored) is str  # the plain word in the database


def test_a_row_refuses_a_status_that_is_not_one():
    with pytest.raises(ValueError, match="unknown status 'done'"):
        Outcome.new("e1", "/in/a.jpg", datetime.now(UTC), status="done")


def test_regimes_serialise_as_their_words():
    assert json.dumps({Regime.CLOSE_UP: 1, "r": Regime.WHOLE}) == '{"close-up": 1, "r": "whole"}'


def test_reading_settings_loads_no_other_moodwatch_module():
    # settings imported moodwatch.queue (the Celery app's module) to check the cron expression.
    code = ("import sys\nfrom moodwatch.settings import Settings\nSettings(retrain_cron='0 2 * * *')\n"
            "print(sorted(m for m in sys.modules if m.startswith('moodwatch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['moodwatch', 'moodwatch.settings', 'moodwatch.vocab']"
