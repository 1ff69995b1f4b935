"""Tables users query directly: ``results`` (one row per file event) and ``model_versions``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # One per file event: a redelivered job with the same event id finds its row and adds none.
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text, doc="file path as received")
    # The path's exact bytes when it is not UTF-8 text (then `path` shows those bytes as \xNN).
    path_bytes: Mapped[bytes | None] = mapped_column(LargeBinary)
    file_name: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(8))
    confidence: Mapped[float | None] = mapped_column(Float, doc="probability of the label, 0.5-1")
    score: Mapped[float | None] = mapped_column(Float, doc="raw sigmoid output, P(sad)")
    model_version: Mapped[str | None] = mapped_column(String(80))
    error: Mapped[str | None] = mapped_column(Text)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("results.id"))
    stored_path: Mapped[str | None] = mapped_column(Text, doc="where the file is now")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    classified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    processing_ms: Mapped[float | None] = mapped_column(Float)
    # A person's verdict from the review page: happy, sad, or skip (seen, no opinion).
    human_label: Mapped[str | None] = mapped_column(String(8))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Face boxes the model used, [x, y, w, h] as fractions of the image; null if it used none.
    faces: Mapped[list | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_results_received_at", "received_at"),
        Index("ix_results_classified_at", "classified_at"),
        Index("ix_results_label", "label"),
        Index("ix_results_status", "status"),
        Index("ix_results_sha256", "sha256"),
        Index("ix_results_model_version", "model_version"),
        Index("ix_results_review", "status", "reviewed_at", "confidence"),
        # Deleting a row checks that no duplicate refers to it: without this, a scan per row.
        Index("ix_results_duplicate_of", "duplicate_of"),
    )


class Submission(Base):
    """A file `moodwatch submit` sent from outside the inbox: the only such files a worker reads."""

    __tablename__ = "submissions"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelVersion(Base):
    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    architecture: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accuracy: Mapped[float | None] = mapped_column(Float)
    precision: Mapped[float | None] = mapped_column(Float)
    recall: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    promoted: Mapped[bool] = mapped_column(default=False)
    metrics: Mapped[dict | None] = mapped_column(JSON)


class ModelPublication(Base):
    """A model version's serving files, published so a worker on another machine can fetch them
    (moodwatch.publication): one tar archive and its sha256. The current version is the one
    promoted last (the greatest promoted_at); a version published but never promoted has none."""

    __tablename__ = "model_publications"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    archive: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_model_publications_promoted_at", "promoted_at"),)
