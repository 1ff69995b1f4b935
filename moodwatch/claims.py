"""Claim checks (MOODWATCH_TRANSPORT=broker): a file's bytes wait in Redis under a key of their
own, and the job carries the key, the size and the sha256.

The watcher puts the bytes; the worker that takes the job reads them and deletes them once the
job's rows are committed. Every key expires (MOODWATCH_CLAIM_TTL_SECONDS): bytes whose job was
lost do not stay in Redis's memory, and the watcher, seeing the key gone with no row, sends the
file again. Bytes are never inlined in the message, even for small files: measured (README, "More
machines"), sending a batch of 32 files as claims took 8 ms at 20 kB a file, 12 ms at 100 kB and
50 ms at 1 MB, and inline (base64 in the JSON message) 43, 174 and 1,660 ms. One path is also one
set of checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from moodwatch.broker import redis_client, start_or_join_broker
from moodwatch.jobs import CLAIM_PREFIX
from moodwatch.settings import Settings

# A file of MOODWATCH_MAX_FILE_BYTES (50 MB) takes well under a second on any network a
# worker should use; heartbeat's 2 s default would cut a large file short.
TIMEOUT = 30.0


class ClaimStore:
    def __init__(self, client: Any, ttl: int):
        self.client = client
        self.ttl = ttl

    def put(self, items: dict[str, bytes]) -> None:
        """Store bytes under their keys (one round trip), each with the expiry."""
        pipe = self.client.pipeline(transaction=False)
        for key, data in items.items():
            pipe.set(key, data, ex=self.ttl)
        pipe.execute()

    def size(self, key: str) -> int:
        """The length of the bytes under key; 0 when there are none (an empty file is never sent)."""
        return int(self.client.strlen(key))

    def get(self, key: str) -> bytes | None:
        return self.client.get(key)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.client.delete(*keys)

    def missing(self, keys: Iterable[str]) -> set[str]:
        """Which of these keys hold nothing (taken and deleted, or expired, or never stored)."""
        keys = list(keys)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return {k for k, n in zip(keys, pipe.execute(), strict=True) if not n}

    def held(self) -> int:
        """Bytes held under every claim key now (for `status`, benchmarks and tests)."""
        return sum(self.size(k) for k in self.client.scan_iter(match=f"{CLAIM_PREFIX}*", count=1000))


def open_claims(settings: Settings, broker_url: str | None = None) -> ClaimStore:
    """The claim store on the broker (the same Redis as the queue, so nothing else to run)."""
    return ClaimStore(redis_client(broker_url or start_or_join_broker(settings), timeout=TIMEOUT),
                      settings.claim_ttl_seconds)

