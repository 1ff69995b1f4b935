"""More machines (issue 21): the broker transport against the shared one, one worker node against
two, and Redis's peak memory with a large drop held by the in-flight bound. Prints figures.

    python benchmarks/more_machines.py [--photos 1000] [--memory-photos 5000] [--only throughput|memory]

Every run is a real watcher (`moodwatch watch`) and real worker nodes (`moodwatch worker -c 1`),
a fresh PostgreSQL database (created on --pg-admin, dropped after) and a redis-server of the
benchmark's own on a free port (the machine's 127.0.0.1:6379 is never touched). Photos are
copied, cycled, from ../shared/datasets/web-happy-sad, each with bytes of its own (a comment
segment, benchmarks/soak_hostile.unique_bytes), so no row is a duplicate; they are written
beside the inbox and renamed into it at once, and the clock starts then.

* throughput, same run: `shared` (one node seeing the inbox, the shipped model from models/)
  against `broker` with one node and with two, each node in a mount namespace of its own
  (`unshare -m`, a tmpfs over the watcher's data folder and over each shipped version), its model published
  in the database (MOODWATCH_MODEL_SOURCE=database). Figures: photos per second from the drop to
  the last row, and to the last file moved. Model loading is not timed: every node is ready first.
* memory: --memory-photos small photos (96 px, a few kB) dropped at once into the broker
  transport, with MOODWATCH_MAX_INFLIGHT_BYTES / _JOBS set low (--bound-bytes, --bound-jobs),
  then with them at the settings' maxima (no bound in practice), each on a fresh redis-server:
  INFO memory's used_memory before the drop and used_memory_peak after.

Each run checks one row per photo and nothing left under moodwatch:claim:*; a failed check exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from benchmarks.soak_hostile import DATASET, unique_bytes  # noqa: E402
from db.migrate import open_database, upgrade  # noqa: E402
from moodwatch.jobs import CLAIM_PREFIX  # noqa: E402
from moodwatch.publication import publish  # noqa: E402
from moodwatch.registry import is_version_dir  # noqa: E402
from moodwatch.settings import Settings  # noqa: E402
from tests.procs import OwnRedis, Rows, redis_server_binary, service_env, stop, wait_for  # noqa: E402

SHIPPED = ROOT / "models"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
READY = "loaded and warmed up"


@dataclass(frozen=True)
class Scenario:
    label: str
    transport: str  # shared | broker
    nodes: int
    settings: dict = field(default_factory=dict)  # more MOODWATCH_* for the watcher and the nodes


@dataclass
class Figures:
    label: str
    photos: int
    bytes: int
    to_rows: float  # seconds from the drop to the last row
    to_moved: float  # ... to the last file out of the inbox
    statuses: Counter
    redis_before: int = 0  # used_memory just before the drop
    redis_peak: int = 0  # used_memory_peak at the end
    waited: bool = False  # the watcher said the in-flight bound held files back

    @property
    def rate(self) -> float:
        return self.photos / self.to_rows if self.to_rows else 0.0


# -- the photos -------------------------------------------------------------------------------

def dataset_photos(count: int) -> list[tuple[str, bytes]]:
    sources = sorted(p for p in DATASET.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"error: no photos under {DATASET}")
    blobs = {p: p.read_bytes() for p in sources}
    return [(f"photo_{i:05d}{sources[i % len(sources)].suffix.lower()}",
             unique_bytes(blobs[sources[i % len(sources)]], f"bench {i}")) for i in range(count)]


def small_photos(count: int) -> list[tuple[str, bytes]]:
    """96-pixel JPEGs from the tests' face generator: a few kB each, distinct bytes."""
    import cv2

    from tests.imagegen import face_like

    bases = [cv2.imencode(".jpg", face_like("happy" if i % 2 else "sad", i)[:, :, ::-1])[1].tobytes()
             for i in range(16)]
    return [(f"small_{i:05d}.jpg", unique_bytes(bases[i % len(bases)], f"small {i}")) for i in range(count)]


# -- the servers ------------------------------------------------------------------------------

@contextlib.contextmanager
def temp_database(admin: str) -> Iterator[str]:
    import psycopg

    name = f"mw_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = dict(p.split("=", 1) for p in admin.split())
    try:
        user = params.get("user", "postgres")
        yield f"postgresql+psycopg://{user}@{params['host']}:{params['port']}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def memory(url: str) -> dict:
    client = redis.Redis.from_url(url)
    try:
        return client.info("memory")
    finally:
        client.close()


def claims_left(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{CLAIM_PREFIX}*", count=1000))
    finally:
        client.close()


# -- one run ----------------------------------------------------------------------------------

class Run:
    """The watcher and the nodes of one scenario, in a folder of their own."""

    def __init__(self, sc: Scenario, work: Path, db_url: str, redis_url: str):
        self.sc, self.work, self.db_url, self.redis_url = sc, work, db_url, redis_url
        self.wdata = work / "watcher-data"
        self.inbox = self.wdata / "inbox"
        self.inbox.mkdir(parents=True)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def env(self, **extra) -> dict[str, str]:
        return service_env(broker_url=self.redis_url, database_url=self.db_url, transport=self.sc.transport,
                           settle_seconds=0.3, batch_wait=0.2, **self.sc.settings, **extra)

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            self.procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                               start_new_session=True))
        self.logs.append(log)

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "moodwatch_app.cli", "watch"],
                    self.env(data_dir=self.wdata, model_dir=SHIPPED), self.work / "watcher.log")
        for i in range(self.sc.nodes):
            self._node(i)

    def _node(self, i: int) -> None:
        cmd = f'exec "{sys.executable}" -m moodwatch_app.cli worker -c 1 -n node{i}@%h'
        log = self.work / f"node{i}.log"
        if self.sc.transport == "shared":  # sees the inbox and models/ at the watcher's paths
            self._spawn(["sh", "-c", cmd], self.env(data_dir=self.wdata, model_dir=SHIPPED), log)
            return
        own = self.work / f"node{i}"
        (own / "models").mkdir(parents=True)
        # The watcher's folder and every shipped version: the detector (models/detector) is part
        # of the installation every machine has, the versions are what the database carries.
        hidden = [self.wdata] + [p for p in SHIPPED.iterdir() if is_version_dir(p)]
        hide = " && ".join(f'mount -t tmpfs tmpfs "{p}"' for p in hidden)
        env = self.env(data_dir=own / "data", inbox=own / "data" / "inbox", model_dir=own / "models",
                       model_source="database")
        self._spawn(["unshare", "-m", "--propagation", "private", "sh", "-c", f"{hide} && {cmd}"], env, log)

    def wait_ready(self, timeout: float = 600) -> None:
        for log in self.logs[1:]:
            wait_for(lambda log=log: self._ready(log), timeout, f"{log.name} ready", log)

    @staticmethod
    def _ready(log: Path) -> bool:
        said = log.read_text(errors="replace")
        if "model cannot serve" in said:
            raise AssertionError(f"{log.name}: the model cannot serve: {said[-2000:]}")
        return READY in said

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)

    def watcher_said(self, text: str) -> bool:
        return text in self.logs[0].read_text(errors="replace")


def drop(photos: list[tuple[str, bytes]], inbox: Path, stage: Path) -> None:
    """Written beside the inbox first (same file system), then renamed in: a drop at once."""
    stage.mkdir()
    for name, data in photos:
        (stage / name).write_bytes(data)
    for name, _ in photos:
        os.rename(stage / name, inbox / name)


def run(sc: Scenario, photos: list[tuple[str, bytes]], work: Path, admin: str, redis_url: str,
        timeout: float) -> Figures:
    with temp_database(admin) as db_url:
        upgrade(db_url)
        if sc.transport == "broker":  # the shipped version, as `moodwatch models publish` does
            publish(Settings(data_dir=work / "publisher", model_dir=SHIPPED, database_url=db_url),
                    open_database(db_url))
        r = Run(sc, work, db_url, redis_url)
        rows = Rows(db_url)
        try:
            r.start()
            r.wait_ready()
            before = int(memory(redis_url)["used_memory"])
            t0 = time.monotonic()
            drop(photos, r.inbox, work / "stage")
            n = len(photos)
            wait_for(lambda: rows.count() >= n, timeout, f"{n} rows ({sc.label})", r.logs[-1])
            to_rows = time.monotonic() - t0
            wait_for(lambda: not any(r.inbox.iterdir()), 120, f"the inbox emptied ({sc.label})", r.logs[0])
            to_moved = time.monotonic() - t0
            found = rows.all()
            per_path = Counter(x.path for x in found)
            if len(per_path) != n or set(per_path.values()) != {1}:
                raise SystemExit(f"error: {sc.label}: {len(found)} rows for {n} photos")
            wait_for(lambda: claims_left(redis_url) == 0, 30, f"no claims left ({sc.label})")
            peak = int(memory(redis_url)["used_memory_peak"])
            return Figures(sc.label, n, sum(len(d) for _, d in photos), to_rows, to_moved,
                           Counter(x.status for x in found), before, peak,
                           r.watcher_said("waiting for their rows"))
        finally:
            r.stop()
            rows.close()


# -- the report -------------------------------------------------------------------------------

def mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def throughput(args: argparse.Namespace, work: Path, binary: str) -> list[str]:
    photos = dataset_photos(args.photos)
    server = OwnRedis(work / "redis", binary, appendonly=False)
    server.start()
    out = [f"throughput: {len(photos)} photos ({mib(sum(len(d) for _, d in photos))}) from {DATASET.name}, "
           f"the shipped model, nodes of `moodwatch worker -c 1`, {os.cpu_count()} CPUs"]
    figures = []
    try:
        for i, sc in enumerate([Scenario("shared, 1 node", "shared", 1),
                                Scenario("broker, 1 node", "broker", 1),
                                Scenario("broker, 2 nodes", "broker", 2)]):
            f = run(sc, photos, work / f"run{i}", args.pg_admin, server.url(i), args.timeout)
            figures.append(f)
            out.append(f"  {f.label:16} {f.rate:6.1f} photos/s to the last row ({f.to_rows:.1f} s), "
                       f"inbox empty after {f.to_moved:.1f} s; rows {dict(f.statuses)}")
    finally:
        server.stop()
    shared, one, two = figures
    out.append(f"  broker / shared: {one.rate / shared.rate:.2f}; "
               f"2 nodes / 1 node: {two.rate / one.rate:.2f} "
               f"(same {os.cpu_count()} CPUs: a second node adds processes, not CPU)")
    return out


def peak_memory(args: argparse.Namespace, work: Path, binary: str) -> list[str]:
    """The same drop with the bound set low, then with it as good as off (the settings' maxima),
    each on a fresh redis-server, so that each peak is its run's own."""
    photos = small_photos(args.memory_photos)
    total = sum(len(d) for _, d in photos)
    out = [f"memory: {len(photos)} small photos ({mib(total)}) dropped at once, broker, 1 node"]
    for tag, nbytes, jobs in (("bounded", args.bound_bytes, args.bound_jobs),
                              ("unbounded", 64 * 1024**3, 100_000)):
        server = OwnRedis(work / f"redis-{tag}", binary, appendonly=False)
        server.start()
        bound = {"max_inflight_bytes": nbytes, "max_inflight_jobs": jobs}
        try:
            f = run(Scenario(f"broker, {tag}", "broker", 1, bound), photos, work / f"memory-{tag}",
                    args.pg_admin, server.url(0), args.timeout)
        finally:
            server.stop()
        out.append(f"  {tag:9} (MAX_INFLIGHT_BYTES={nbytes}, _JOBS={jobs}): Redis used_memory before "
                   f"{mib(f.redis_before)}, used_memory_peak {mib(f.redis_peak)} "
                   f"(+{mib(f.redis_peak - f.redis_before)}); waited at the bound: "
                   f"{'yes' if f.waited else 'no'}; {f.rate:.1f} photos/s; rows {dict(f.statuses)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000, help="photos per throughput run")
    parser.add_argument("--memory-photos", type=int, default=5000, help="small photos of the memory run")
    parser.add_argument("--bound-bytes", type=int, default=2 * 1024**2, help="MOODWATCH_MAX_INFLIGHT_BYTES")
    parser.add_argument("--bound-jobs", type=int, default=8, help="MOODWATCH_MAX_INFLIGHT_JOBS")
    parser.add_argument("--only", choices=["throughput", "memory"])
    parser.add_argument("--pg-admin", default=os.environ.get("MOODWATCH_BENCH_PG_ADMIN", PG_ADMIN),
                        help="libpq connection string of a role that may create databases")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a run may take")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args()
    if min(args.photos, args.memory_photos, args.bound_bytes, args.bound_jobs) < 1:
        raise SystemExit("error: counts and bounds must be at least 1")
    binary = redis_server_binary()
    if binary is None or shutil.which("unshare") is None:
        raise SystemExit("error: needs a redis-server binary and unshare (util-linux), run as root")
    work = Path(tempfile.mkdtemp(prefix="mw-more-machines-"))
    lines: list[str] = []
    try:
        if args.only in (None, "throughput"):
            lines += throughput(args, work, binary)
            print("\n".join(lines), flush=True)
        if args.only in (None, "memory"):
            more = peak_memory(args, work, binary)
            print("\n".join(more), flush=True)
    except (AssertionError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0]} (logs kept in {work})", file=sys.stderr)
        raise SystemExit(1) from None
    if args.keep:
        print(f"logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
