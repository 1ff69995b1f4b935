"""Gallery and API paging over 100,000 result rows (SQLite): prints milliseconds per page.

    python benchmarks/web_paging.py [ROWS]
"""

import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from fastapi.testclient import TestClient  # noqa: E402

from db.engine import make_engine, make_sessionmaker  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.repository import insert_results  # noqa: E402
from moodwatch.outcome import Outcome  # noqa: E402
from moodwatch.settings import Settings  # noqa: E402
from web.app import create_app  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    work = Path(tempfile.mkdtemp(prefix="moodwatch-paging-"))
    url = f"sqlite:///{work / 'r.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    now = datetime.now(UTC)
    for start in range(0, n, 1000):
        rows = [Outcome.new(f"e{i}", f"/in/{i}.jpg", now - timedelta(seconds=n - i), status="classified",
                            label="happy" if i % 3 else "sad", confidence=0.5 + (i % 500) / 1000,
                            model_version="v1", classified_at=now) for i in range(start, start + 1000)]
        with sessions() as s, s.begin():
            insert_results(s, rows)
    settings = Settings(data_dir=work / "data", model_dir=ROOT / "models", database_url=url,
                        broker_url="redis://127.0.0.1:1/0")
    client = TestClient(create_app(settings))
    client.get("/")  # warm the status strip cache

    def timed(path: str, **params) -> float:
        t0 = time.perf_counter()
        r = client.get(path, params=params)
        assert r.status_code == 200, r.text[:200]
        return (time.perf_counter() - t0) * 1000

    print(f"{n:,} rows")
    print(f"gallery, first page: {timed('/'):.0f} ms")
    print(f"gallery, page at row ~{n // 2:,} (keyset): {timed('/', before=n // 2):.0f} ms")
    print(f"gallery, label=sad, page near the end: {timed('/', label='sad', before=100):.0f} ms")
    yesterday = (now - timedelta(days=1)).date().isoformat()
    ms = timed("/", min_conf="0.5", max_conf="0.55", since=yesterday)
    print(f"gallery, confidence 0.5-0.55 since yesterday: {ms:.0f} ms")
    print(f"review queue: {timed('/review'):.0f} ms")
    print(f"api, 50 rows deep: {timed('/api/results', before=1000, limit=50):.0f} ms")
    print(f"api stats: {timed('/api/stats'):.0f} ms")


if __name__ == "__main__":
    main()
