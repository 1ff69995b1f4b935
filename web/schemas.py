"""What the JSON API answers, field by field: the OpenAPI description (/api/openapi.json and the
/api/docs page) is generated from these models, so each field says what it means here.

Every time is UTC, ISO-8601 with its offset (``2026-11-29T14:03:12.345678+00:00``): SQLite
hands times back without a zone, so one is never left for a client to guess.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_serializer


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time in UTC: a time without a zone was stored as UTC (every writer uses UTC)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def utc_text(value: datetime | str | None) -> str | None:
    """A time as UTC ISO-8601 with its offset; text is parsed first (runs.jsonl holds text)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value  # not a time this code wrote: shown as it is
    return None if value is None else as_utc(value).isoformat()


class ResultOut(BaseModel):
    """One row of the results table: one arrival of one file and what became of it."""

    id: int = Field(description="Row id; newer rows have larger ids. Page on with `before`.", examples=[4211])
    event_id: str = Field(description="Identifies one arrival of one file (path, inode, size, mtime): "
                          "the same file seen again gets the same id and no second row.")
    path: str = Field(description="The file's path as it was received (in the inbox, or as submitted).",
                      examples=["/srv/moodwatch/data/inbox/trip/IMG_0042.jpg"])
    path_bytes: str | None = Field(description="The path's exact bytes, hex, when it is not UTF-8 text "
                                   "(then `path` shows those bytes as \\xNN); else null.")
    file_name: str = Field(description="The last part of `path`.", examples=["IMG_0042.jpg"])
    sha256: str | None = Field(description="Hex SHA-256 of the bytes that were read; null if none were.")
    status: str = Field(description="classified (has a label), rejected (not a usable image) or failed "
                        "(could not be read or classified; `error` says why).", examples=["classified"])
    label: str | None = Field(description="happy or sad; null unless classified.", examples=["happy"])
    confidence: float | None = Field(description="The model's probability of `label`, 0.5 to 1.",
                                     examples=[0.91])
    score: float | None = Field(description="The model's raw output, P(sad), 0 to 1.", examples=[0.09])
    model_version: str | None = Field(description="The model version that classified the file.",
                                      examples=["v20261129T174400800611-default-faces"])
    error: str | None = Field(description="Why the file was rejected or failed; null otherwise.")
    duplicate_of: int | None = Field(description="Id of the row whose file had the same bytes: this "
                                     "one took its label from there.")
    stored_path: str | None = Field(description="Where the file is now (processed/<label>/..., "
                                    "rejected/..., or still where it was received).")
    received_at: datetime = Field(description="When the watcher saw the file (UTC).")
    classified_at: datetime | None = Field(description="When its row was written (UTC).")
    processing_ms: float | None = Field(description="Milliseconds the worker spent on this file.")
    human_label: str | None = Field(description="A person's verdict from the review page: happy, sad, "
                                    "or skip (seen, no opinion); null if nobody reviewed it.")
    reviewed_at: datetime | None = Field(description="When a person reviewed it (UTC).")
    faces: list[list[float]] | None = Field(description="Face boxes the model used, [x, y, width, "
                                            "height] as fractions of the image; null if it used none.")

    @field_serializer("received_at", "classified_at", "reviewed_at")
    def _utc(self, value: datetime | None) -> str | None:
        return utc_text(value)


class Stats(BaseModel):
    """Counts over the whole results table, and the last hour's throughput."""

    total: int = Field(description="Rows in the results table.", examples=[1520])
    by_status: dict[str, int] = Field(description="Rows per status (classified, rejected, failed).",
                                      examples=[{"classified": 1480, "rejected": 32, "failed": 8}])
    by_label: dict[str, int] = Field(description="Classified rows per label.",
                                     examples=[{"happy": 902, "sad": 578}])
    last_hour: int = Field(description="Files classified in the last 60 minutes.", examples=[240])
    per_minute_last_hour: float = Field(description="last_hour / 60: classified files a minute.",
                                        examples=[4.0])


class VersionMetrics(BaseModel):
    """A version's figures on its held-out test photos (the trainer's metrics.json, `test`)."""

    model_config = ConfigDict(extra="allow")

    accuracy: float | None = Field(None, description="Share of test photos labelled right.")
    precision: float | None = Field(None, description="Of the photos called sad, the share that were sad.")
    recall: float | None = Field(None, description="Of the sad photos, the share called sad.")
    f1: float | None = Field(None, description="Harmonic mean of precision and recall.")
    ece: float | None = Field(None, description="Expected calibration error: how far confidence "
                              "is from accuracy, averaged over confidence bands (0 is perfect).")
    n: int | None = Field(None, description="Test photos.")
    positive_class: str | None = Field(None, description="The class precision and recall are about.")
    confusion_matrix: dict[str, Any] | None = Field(
        None, description="`labels` and `rows_true_cols_predicted`: rows are the true labels, columns "
        "the predicted ones.",
        examples=[{"labels": ["happy", "sad"], "rows_true_cols_predicted": [[12, 3], [2, 13]]}])
    calibration: list[dict[str, Any]] | None = Field(
        None, description="Per confidence band: photos (n), their mean confidence, their accuracy.")


class Agreement(BaseModel):
    agreed: int = Field(description="Reviewed results whose label the person confirmed.")
    reviewed: int = Field(description="Results of this version a person labelled happy or sad.")


class VersionOut(BaseModel):
    version: str = Field(description="Version name: v<UTC time of training>-<architecture>.",
                         examples=["v20261129T174400800611-default-faces"])
    metrics: VersionMetrics | None = Field(description="Its figures on its test photos; null if unknown.")
    architecture: str = Field(description="Network, with +faces when it reads faces too.",
                              examples=["default+faces"])
    agreement: Agreement | None = Field(description="How often people agreed with it on the review "
                                        "page; null if nobody reviewed its results.")


class RunOut(BaseModel):
    """One training run, trained or skipped (runs.jsonl); further keys as the trainer wrote them."""

    model_config = ConfigDict(extra="allow")

    at: str | None = Field(None, description="When the run ended (UTC, ISO-8601 with offset).")
    outcome: str | None = Field(None, description="promoted, trained (kept, not promoted) or skipped.")
    version: str | None = Field(None, description="The version it trained; null when skipped.")
    reason: str | None = Field(None, description="Why it was promoted, kept or skipped.")
    test_n: int | None = Field(None, description="Test photos the decision was made on.")

    @field_serializer("at")
    def _utc(self, value: str | None) -> str | None:
        return utc_text(value)


class ModelsOut(BaseModel):
    current: str | None = Field(description="The version classifying new photos now.",
                                examples=["v20261129T174400800611-default-faces"])
    versions: list[VersionOut] = Field(description="Every version in the registry, oldest first.")
    runs: list[RunOut] = Field(description="Every training run, oldest first.")


# The query parameters the result routes share, each with its meaning and an example.
Label = Annotated[str | None, Query(description="Only this label: happy or sad.", examples=["happy"])]
Status = Annotated[str | None, Query(description="Only this status: classified, rejected or failed.",
                                     examples=["classified"])]
MinConf = Annotated[float | None, Query(description="Only rows with at least this confidence (0.5 to 1).",
                                        examples=[0.9])]
MaxConf = Annotated[float | None, Query(description="Only rows with at most this confidence (0.5 to 1): "
                                        "the doubtful ones.", examples=[0.6])]
Since = Annotated[str | None, Query(description="Only rows received at or after this ISO date or time "
                                    "(UTC unless it carries an offset).", examples=["2026-11-29"])]
Until = Annotated[str | None, Query(description="Only rows received before this ISO date or time "
                                    "(UTC unless it carries an offset).",
                                    examples=["2026-11-30T12:00:00+01:00"])]
Model = Annotated[str | None, Query(description="Only rows classified by this model version.",
                                    examples=["v20261129T174400800611-default-faces"])]
