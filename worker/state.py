"""What one worker process holds: its settings and broker, and, made on first use inside the
process that uses them (never in the parent that forks the pool: TensorFlow is not fork-safe),
its database sessions, model cache and claim store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import sessionmaker

from db.engine import make_engine, make_sessionmaker
from moodwatch.claims import ClaimStore, open_claims
from moodwatch.heartbeat import Heartbeat
from moodwatch.publication import registry_for_worker
from moodwatch.settings import Settings
from worker.inference import ModelCache


@dataclass
class WorkerProcess:
    settings: Settings
    broker_url: str
    pool_process: bool = False  # a prefork pool's child (not a solo pool's main process)
    heartbeat: Heartbeat | None = None  # readiness for `moodwatch run`, `status` and the page
    # While a batch holds SIGTERM off: the handler from before, in a tuple (it may itself be None).
    sigterm_before: tuple[Any] | None = None
    _sessions: sessionmaker | None = field(default=None, repr=False)
    _models: ModelCache | None = field(default=None, repr=False)
    _claims: ClaimStore | None = field(default=None, repr=False)

    def sessions(self) -> sessionmaker:
        if self._sessions is None:
            self._sessions = make_sessionmaker(make_engine(self.settings.database))
        return self._sessions

    def models(self) -> ModelCache:
        if self._models is None:
            # The folders, or the database's publications (MOODWATCH_MODEL_SOURCE=database).
            self._models = ModelCache(registry_for_worker(self.settings, self.sessions()),
                                      self.settings.batch_size, precision=self.settings.cnn_precision)
        return self._models

    def claims(self) -> ClaimStore | None:
        """The claim store on the broker, or None in shared mode (the files are read from the path)."""
        if self.settings.transport != "broker":
            return None
        if self._claims is None:
            self._claims = open_claims(self.settings, self.broker_url)
        return self._claims
