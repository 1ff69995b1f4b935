"""Soak: photos and hostile files dropped at once into `moodwatch run`, its parent killed outright.

    python benchmarks/soak_hostile.py [--photos 1000] [--kills 2] [--bound SECONDS] [--keep]

A real `moodwatch run` (embedded Redis and SQLite, the shipped model, worker, watcher, beat and
review page) in a fresh temporary data folder and MOODWATCH_HOME, so no user's service is
touched. Photos are copied, cycled, from ../shared/datasets/web-happy-sad, each with bytes of its
own (a comment segment or chunk), so none is recorded as a duplicate of another. Dropped with
them, first in the queue: 17 hostile files (scan bombs, two slow JPEGs inside every limit, a
pixel bomb, 254-byte and non-UTF-8 names, control characters, a truncated JPEG, an empty file, a
FIFO, a symbolic link, text named .jpg); 3 more (the long and non-UTF-8 names again, so the
destination's `-1` suffix no longer fits) as soon as their first copies have left the inbox.

While the files are processed the parent is SIGKILLed --kills times (its children must die with
it) and started again at once, as an operator would, retrying while the dying service's locks
still refuse it. At the end, after a clean stop, it checks and prints:

* every file has exactly one row (counts by status; each hostile file's outcome),
* exactly one copy of every file on disk (inbox, processed/, rejected/): none lost, none
  duplicated, no temporaries, each row pointing at its copy; the link's target untouched,
* no process left from a killed run, and none at all after the stop,
* the longest wait from drop to row of a normal photo, against a bound: the outages the kills
  caused (each kill to the restarted run's first row), plus the visibility timeout (the longest a
  job taken by a killed worker waits for another), plus the classify job's hard time limit (the
  longest any job, a bomb's included, can hold a worker process); and the longest stall (no row
  while files were waiting, outside those outages) against that hard limit alone.

Exits 1 if any check fails (the temporary folder is then kept, and named).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import psutil
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.engine import make_engine, make_sessionmaker  # noqa: E402
from db.models import Result  # noqa: E402
from moodwatch.files import TEMP_PREFIX as _TEMP  # noqa: E402
from moodwatch.files import printable  # noqa: E402
from moodwatch.images import MAX_JPEG_SCANS  # noqa: E402
from moodwatch.queue import classify_time_limits  # noqa: E402
from moodwatch.settings import Settings  # noqa: E402
from tests.imagegen import huge_png_header  # noqa: E402
from tests.procs import free_port  # noqa: E402
from tests.test_decode_bombs import progressive, with_scans  # noqa: E402

TEMP_PREFIX = _TEMP.encode()  # a partial copy's name while a move writes it
DATASET = ROOT.parent / "shared" / "datasets" / "web-happy-sad"
READY = "moodwatch is running"
LONG = "L" * 250 + ".jpg"  # 254 bytes: legal, and with a "-1" suffix (256) no longer
LONG_TEXT = "T" * 250 + ".jpg"
FF_NAME = b"\xff" * 246 + b".jpg"  # 250 raw bytes; escaped to \xff each, 988 characters


@dataclass
class Drop:
    """One file the soak drops, and how to recognise its copy on disk."""

    name: bytes  # relative to the inbox, raw
    kind: str  # "photo", or what the hostile file is
    data: bytes | None = None  # None for the FIFO and the link
    link_to: bytes | None = None
    wave: int = 1
    dropped_at: float = 0.0  # wall-clock seconds (rows carry wall-clock times)

    @property
    def identity(self) -> tuple:
        if self.link_to is not None:
            return ("link", self.link_to)
        if self.data is None:
            return ("fifo",)
        return ("file", hashlib.sha256(self.data).hexdigest())


@dataclass
class Kill:
    at: float  # wall clock
    old_pids: list[int]
    gone_after: float | None = None  # seconds until the killed run's last process was gone
    refused: int = 0  # restarts refused while the dying service held its locks
    ready_after: float = 0.0
    first_row_at: float | None = None
    left: list[str] = field(default_factory=list)


# -- the files ----------------------------------------------------------------------------------

def unique_bytes(data: bytes, tag: str) -> bytes:
    """The image with a comment of its own: a JPEG COM segment after SOI, a PNG tEXt chunk after
    IHDR. The pixels are untouched; the sha256 differs, so no copy is a duplicate."""
    text = f"soak {tag}".encode()
    if data[:2] == b"\xff\xd8":
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        body = b"Comment\x00" + text
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
        return data[:33] + chunk + data[33:]
    raise ValueError("neither JPEG nor PNG")


def photos(count: int) -> list[Drop]:
    sources = sorted(p for p in DATASET.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"no photos under {DATASET}")
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        out.append(Drop(f"photo_{i:05d}{src.suffix.lower()}".encode(), "photo",
                        unique_bytes(src.read_bytes(), str(i))))
    return out


def hostile(outside: Path) -> list[Drop]:
    """The 20 hostile files: scan bombs and slow JPEGs first, so photos queue behind them."""
    sample = next(p for p in sorted(DATASET.rglob("*.jpg")) if p.read_bytes()[:2] == b"\xff\xd8")
    photo = sample.read_bytes()
    big = progressive(7000, "L")  # 49 MP, inside the pixel limit
    target = outside / "link-target.jpg"
    target.write_bytes(unique_bytes(photo, "link target"))
    slow = with_scans(big, MAX_JPEG_SCANS, slow=True)

    def text(tag: str) -> bytes:
        return f"not an image ({tag})\n".encode()

    return [
        Drop(b"bomb-20000-scans-7000px.jpg", "scan bomb (issue 18's)", with_scans(big, 20_000)),
        Drop(b"bomb-20000-scans-1024px.jpg", "scan bomb", with_scans(progressive(1024), 20_000)),
        Drop(b"bomb-101-scans.jpg", "scan bomb (one past the limit)",
             with_scans(progressive(512), MAX_JPEG_SCANS + 1)),
        Drop(b"slow-100-scans-a.jpg", "slow JPEG inside every limit", unique_bytes(slow, "a")),
        Drop(b"slow-100-scans-b.jpg", "slow JPEG inside every limit", unique_bytes(slow, "b")),
        Drop(b"bomb-400MP.png", "pixel bomb", huge_png_header(20_000, 20_000)),
        Drop(LONG.encode(), "254-byte name", unique_bytes(photo, "long 1")),
        Drop(LONG_TEXT.encode(), "254-byte name, text", text("long 1")),
        Drop(FF_NAME, "250 bytes of 0xFF", unique_bytes(photo, "ff 1")),
        Drop(b"caf\xe9-latin1.jpg", "non-UTF-8 name", unique_bytes(photo, "latin1")),
        Drop(b"\x80\xfe\xff-text.jpg", "non-UTF-8 name, text", text("non-utf8")),
        Drop(b"new\nline\ttab.jpg", "control characters in the name", unique_bytes(photo, "ctl")),
        Drop(b"truncated.jpg", "truncated JPEG", photo[: len(photo) // 2]),
        Drop(b"empty.jpg", "empty file", b""),
        Drop(b"fifo.jpg", "FIFO"),
        Drop(b"link.jpg", "symbolic link", link_to=os.fsencode(target)),
        Drop(b"notes.jpg", "text named .jpg", text("notes")),
        Drop(LONG.encode(), "254-byte name, again", unique_bytes(photo, "long 2"), wave=2),
        Drop(LONG_TEXT.encode(), "254-byte name, text, again", text("long 2"), wave=2),
        Drop(FF_NAME, "250 bytes of 0xFF, again", unique_bytes(photo, "ff 2"), wave=2),
    ]


def place(drop: Drop, inbox: Path) -> None:
    path = os.fsencode(inbox) + b"/" + drop.name
    if drop.link_to is not None:
        os.symlink(drop.link_to, path)
    elif drop.data is None:
        os.mkfifo(path)
    else:
        with open(path, "wb") as fh:
            fh.write(drop.data)
    drop.dropped_at = time.time()


# -- the service ----------------------------------------------------------------------------------

class Service:
    """`moodwatch run` in the temporary folder; each start logs to a file of its own."""

    def __init__(self, work: Path):
        self.work = work
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MOODWATCH_")}
        self.env = dict(clean, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
                        MOODWATCH_HOME=str(work / "home"), MOODWATCH_DATA_DIR=str(work / "data"),
                        MOODWATCH_MODEL_DIR=str(ROOT / "models"), MOODWATCH_WEB_PORT=str(free_port()))

    @property
    def log(self) -> Path:
        return self.work / f"run-{self.starts}.log"

    def start(self, timeout: float = 240) -> int:
        """Start it, again while a dying run's locks refuse it; returns how often it was refused."""
        refused, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.starts += 1
            with open(self.log, "wb") as fh:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moodwatch_app.cli", "run"], env=self.env, cwd=self.work,
                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            while self.proc.poll() is None and READY not in self.log.read_text(errors="replace"):
                time.sleep(0.2)
            if self.proc.poll() is None:
                return refused
            lines = self.log.read_text(errors="replace").strip().splitlines()
            if self.proc.returncode != 1 or not lines or not lines[-1].startswith("error:"):
                raise SystemExit(f"moodwatch run failed other than by an `error:` line: {self.log}")
            refused += 1
            time.sleep(1)
        raise SystemExit(f"moodwatch run was refused for {timeout:.0f}s: {self.log}")

    def tree(self) -> list[int]:
        parent = psutil.Process(self.proc.pid)
        return [parent.pid, *(c.pid for c in parent.children(recursive=True))]

    def wait_warm(self, processes: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count("loaded and warmed up") < processes:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the worker did not warm up: {self.log}")
            time.sleep(0.5)


def processes_in(work: Path, exclude: set[int] = frozenset()) -> list[psutil.Process]:
    """Live processes that name the temporary folder in their command line, environment or
    working folder (the embedded Redis works in the data folder): the service's, and only its."""
    mark, found = str(work), []
    for proc in psutil.process_iter():
        if proc.pid in exclude or proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if mark in " ".join(proc.cmdline()) or mark in proc.cwd() or \
                    any(mark in v for v in proc.environ().values()):
                found.append(proc)
    return found


def describe_procs(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
    return out


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
    return out


def _watch_gone(kill: Kill, timeout: float) -> None:
    """Note when the last process of the killed run is gone (None if it outlives timeout)."""
    deadline = time.monotonic() + timeout
    while alive(kill.old_pids):
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)
    kill.gone_after = time.time() - kill.at


# -- reading the outcome ----------------------------------------------------------------------------

def row_time(row: Result) -> float:
    when = row.classified_at or row.received_at
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def row_key(row: Result) -> bytes:
    return row.path_bytes or os.fsencode(row.path)


def on_disk(work: Path) -> tuple[Counter, list[str], dict[bytes, tuple]]:
    """What the inbox, processed/ and rejected/ hold: identities counted, junk named, and the
    identity at each path."""
    found: Counter = Counter()
    junk: list[str] = []
    at: dict[bytes, tuple] = {}
    data = os.fsencode(work / "data")
    for root, _, files in os.walk(data):  # a move's temporary, wherever it was left
        junk += [os.fsdecode(os.path.join(root, n)) for n in files if n.startswith(TEMP_PREFIX)]
    for folder in (b"inbox", b"processed", b"rejected"):
        for root, dirs, files in os.walk(data + b"/" + folder):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                path = os.path.join(root, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    ident: tuple = ("link", os.readlink(path))
                elif stat.S_ISFIFO(st.st_mode):
                    ident = ("fifo",)
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as fh:
                        ident = ("file", hashlib.file_digest(fh, "sha256").hexdigest())
                else:
                    ident = ("other",)
                if (name.startswith(b".") and not name.startswith(TEMP_PREFIX)) or ident == ("other",):
                    junk.append(os.fsdecode(path))
                found[ident] += 1
                at[path] = ident
    return found, junk, at


class Rows:
    def __init__(self, work: Path):
        self.engine = make_engine(f"sqlite:///{work / 'data' / 'moodwatch.db'}")
        self.sessions = make_sessionmaker(self.engine)

    def all(self) -> list[Result]:
        try:
            with self.sessions() as s:
                return list(s.scalars(select(Result)))
        except Exception:  # noqa: BLE001 - the table may not be there yet
            return []


# -- the soak -------------------------------------------------------------------------------------

@dataclass
class Soak:
    work: Path
    drops: list[Drop]
    kills_wanted: int
    service: Service
    rows: Rows
    target: Path  # the symbolic link's target, outside the inbox: never read, never moved
    target_sha: str = ""
    kills: list[Kill] = field(default_factory=list)

    @property
    def inbox(self) -> Path:
        return self.work / "data" / "inbox"

    def wave2_due(self) -> list[Drop]:
        """Second copies whose first copy has left the inbox (so theirs clashes in the outcome
        folder); none before every first copy has."""
        waiting = [d for d in self.drops if d.wave == 2 and not d.dropped_at]
        first = {d.name for d in self.drops if d.wave == 1}
        inbox = os.fsencode(self.inbox) + b"/"
        if any(os.path.lexists(inbox + d.name) for d in waiting if d.name in first):
            return []
        return waiting

    def kill(self) -> None:
        old = self.service.tree()
        k = Kill(time.time(), old)
        os.kill(self.service.proc.pid, signal.SIGKILL)  # the parent only: its children must follow
        self.service.proc.wait()
        gone = threading.Thread(target=_watch_gone, args=(k, 180), daemon=True)
        gone.start()
        k.refused = self.service.start()  # at once, as an operator would
        k.ready_after = time.time() - k.at
        gone.join()
        exclude = set(self.service.tree())
        # The embedded Redis is a daemon the restarted run joins, by design (moodwatch.broker).
        k.left = describe_procs([p for p in processes_in(self.work, exclude) if p.name() != "redis-server"])
        self.kills.append(k)
        brokers = [p.pid for p in processes_in(self.work) if p.name() == "redis-server"]
        print(f"soak: kill {len(self.kills)}: parent SIGKILLed with {len(old) - 1} children; restarted "
              f"after {k.ready_after:.1f}s ({k.refused} refusal(s) while the old locks were held); "
              f"the killed run's processes all gone after {k.gone_after or float('nan'):.1f}s; "
              f"left: {k.left or 'none'}; embedded Redis (joined): {brokers}")

    def drive(self, timeout: float) -> bool:
        """Drop wave 2 when due, kill on schedule, until every file has a row and every row's
        file has moved where it goes (failed files stay in the inbox)."""
        total = len(self.drops)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.wave2_due():
                place(d, self.inbox)
            rows = self.rows.all()
            if len(self.kills) < self.kills_wanted and \
                    len(rows) >= total * (len(self.kills) + 1) / (self.kills_wanted + 1):
                self.kill()
                continue
            in_inbox = sum(len(f) for _, _, f in os.walk(self.inbox))
            failed = sum(r.status == "failed" for r in rows)
            if all(d.dropped_at for d in self.drops) and len(rows) >= total and in_inbox == failed:
                return True
            time.sleep(0.25)
        return False

    def stop(self) -> tuple[float, list[str]]:
        t0 = time.monotonic()
        os.kill(self.service.proc.pid, signal.SIGTERM)
        self.service.proc.wait(timeout=300)
        deadline = time.monotonic() + 30
        while processes_in(self.work) and time.monotonic() < deadline:
            time.sleep(0.2)
        return time.monotonic() - t0, describe_procs(processes_in(self.work))


def rows_by_path(rows: list[Result]) -> dict[bytes, list[Result]]:
    out: dict[bytes, list[Result]] = {}
    for r in rows:
        out.setdefault(row_key(r), []).append(r)
    return out


def row_of(drop: Drop, by_path: dict[bytes, list[Result]], inbox: Path) -> Result | None:
    """The drop's row: at its path, and with its bytes where two drops share the path."""
    got = by_path.get(os.fsencode(inbox) + b"/" + drop.name, [])
    same = [r for r in got if drop.identity[0] != "file" or r.sha256 in (None, drop.identity[1])]
    return same[0] if len(same) == 1 else (got[0] if len(got) == 1 else None)


def check_rows(drops: list[Drop], rows: list[Result], inbox: Path) -> list[str]:
    """Every drop has exactly one row: as many rows at each path as drops there, with their
    bytes' sha256 where known, and no row for anything else."""
    problems = []
    expected: dict[bytes, list[Drop]] = {}
    for d in drops:
        expected.setdefault(d.name, []).append(d)
    by_path = rows_by_path(rows)
    for name, ds in expected.items():
        got = by_path.pop(os.fsencode(inbox) + b"/" + name, [])
        if len(got) != len(ds):
            problems.append(f"{len(got)} row(s) for {len(ds)} drop(s) of {name[:60]!r}")
        shas = sorted(d.identity[1] for d in ds if d.identity[0] == "file")
        got_shas = sorted(r.sha256 for r in got if r.sha256)
        if len(got) == len(ds) and got_shas and got_shas != shas:
            problems.append(f"rows of {name[:60]!r} carry other bytes' sha256")
    problems += [f"{len(v)} unexpected row(s) for {k[:80]!r}" for k, v in by_path.items()]
    return problems


def check_copies(work: Path, drops: list[Drop], rows: list[Result], target: Path,
                 target_sha: str) -> list[str]:
    found, junk, at = on_disk(work)
    wanted = Counter(d.identity for d in drops)
    problems = [f"junk on disk: {j[-120:]}" for j in junk]
    problems += [f"lost: {n} cop(ies) of {ident[:2]}" for ident, n in (wanted - found).items()]
    problems += [f"extra: {n} cop(ies) of {ident[:2]}" for ident, n in (found - wanted).items()
                 if ident != ("other",)]
    for r in rows:  # the row names the copy: moved files by printable names, kept ones as they are
        where = os.fsencode(r.stored_path)
        if where not in at and r.stored_path == r.path:
            where = row_key(r)
        if where not in at:
            problems.append(f"row {r.id} points at nothing: {r.stored_path[-100:]!r}")
    if not target.exists() or hashlib.sha256(target.read_bytes()).hexdigest() != target_sha:
        problems.append("the link's target was moved or changed")
    return problems


def waits(drops: list[Drop], rows: list[Result], inbox: Path) -> dict[str, tuple[float, Result]]:
    """Drop-to-row seconds of each photo that got a row, by its name."""
    photo = {os.fsencode(inbox) + b"/" + d.name: d for d in drops if d.kind == "photo"}
    return {os.fsdecode(d.name): (row_time(r) - d.dropped_at, r)
            for r in rows if (d := photo.get(row_key(r))) is not None}


def longest_stall(rows: list[Result], start: float, kills: list[Kill], end: float) -> float:
    """The longest time with no new row while the service was up and files were waiting:
    outages (a kill to the restarted run's first row) left out."""
    times = sorted(row_time(r) for r in rows)
    windows, since = [], start
    for k in kills:
        windows.append((since, k.at))
        since = k.first_row_at or k.at + k.ready_after
    windows.append((since, end))
    worst = 0.0
    for lo, hi in windows:
        inside = [lo] + [t for t in times if lo <= t <= hi]
        worst = max([worst] + [b - a for a, b in zip(inside, inside[1:], strict=False)])
    return worst


def report(soak: Soak, started: float, finished: bool, bound_override: float | None) -> list[str]:
    drops, work = soak.drops, soak.work
    rows = soak.rows.all()
    for k in soak.kills:  # none later: the killed run's worker finished what was left
        later = [row_time(r) for r in rows if row_time(r) > k.at + k.ready_after]
        k.first_row_at = min(later) if later else k.at + k.ready_after
    problems = [] if finished else ["timed out before every file had its row and its place"]
    problems += check_rows(drops, rows, soak.inbox)
    by_status = Counter(r.status for r in rows)
    by_path = rows_by_path(rows)
    print(f"soak: {len(drops)} files ({sum(d.kind == 'photo' for d in drops)} photos, "
          f"{sum(d.kind != 'photo' for d in drops)} hostile), {len(rows)} rows: {dict(by_status)}; "
          f"duplicates recorded: {sum(r.duplicate_of is not None for r in rows)}")
    for d in drops:
        if d.kind != "photo":
            r = row_of(d, by_path, soak.inbox)
            outcome = f"{r.status}: {(r.error or r.label or '')[:64]}" if r else "NO ROW"
            stored = os.path.basename(r.stored_path) if r else ""
            if stored and stored != printable(os.fsdecode(d.name)):  # renamed: to what, how long
                shown = stored if len(stored) < 40 else f"{stored[:12]}...{stored[-20:]}"
                outcome += f" -> {shown} ({len(os.fsencode(stored))} bytes)"
            print(f"  {d.kind:30} {printable(os.fsdecode(d.name))[:24]:25} {outcome}")
    problems += check_copies(work, drops, rows, soak.target, soak.target_sha)
    photo_waits = waits(drops, rows, soak.inbox)
    classified = sorted(w for w, r in photo_waits.values() if r.status == "classified")
    outages = [(k.first_row_at or k.at + k.ready_after) - k.at for k in soak.kills]
    _, hard = classify_time_limits(Settings())
    visibility = Settings().visibility_timeout
    bound = bound_override if bound_override is not None else sum(outages) + visibility + hard
    longest = max(classified, default=float("nan"))
    stall = longest_stall(rows, started, soak.kills, max((row_time(r) for r in rows), default=started))
    if classified:
        name = max(photo_waits, key=lambda n: photo_waits[n][0])
        print(f"soak: drop to row of {len(classified)} classified photos: median "
              f"{classified[len(classified) // 2]:.1f}s, 95th percentile "
              f"{classified[int(len(classified) * 0.95)]:.1f}s, longest {longest:.1f}s ({name}); "
              f"bound {bound:.0f}s = outages {' + '.join(f'{o:.0f}' for o in outages) or '0'}s "
              f"+ visibility timeout {visibility}s + hard time limit {hard:.0f}s")
    print(f"soak: longest stall (no new row while files waited, outside the outages): {stall:.1f}s; "
          f"bound: the hard time limit, {hard:.0f}s")
    if not classified or longest > bound:
        problems.append(f"a photo waited {longest:.1f}s, more than the bound of {bound:.0f}s")
    if stall > hard:
        problems.append(f"rows stalled for {stall:.1f}s, more than the hard time limit ({hard:.0f}s)")
    for i, k in enumerate(soak.kills, 1):
        if k.gone_after is None or k.left:
            problems.append(f"kill {i}: processes of the killed run left: {k.left or 'still alive'}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--bound", type=float, help="seconds a photo may wait (default: computed)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the whole soak")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moodwatch-soak-hostile-")).resolve()
    (work / "outside").mkdir()
    t0 = time.perf_counter()
    drops = hostile(work / "outside") + photos(args.photos)
    print(f"soak: {len(drops)} files built in {time.perf_counter() - t0:.1f}s; folder {work}")
    service = Service(work)
    target = work / "outside" / "link-target.jpg"
    soak = Soak(work, drops, args.kills, service, Rows(work), target,
                hashlib.sha256(target.read_bytes()).hexdigest())
    problems: list[str] = []
    started, finished = time.time(), False
    try:
        service.start()
        service.wait_warm(Settings().worker_concurrency)
        started = time.time()
        for d in drops:
            if d.wave == 1:
                place(d, soak.inbox)
        print(f"soak: {sum(d.wave == 1 for d in drops)} files dropped in {time.time() - started:.1f}s")
        finished = soak.drive(args.timeout)
        print(f"soak: {'done' if finished else 'TIMED OUT'} {time.time() - started:.1f}s after the drop")
    finally:
        stopped_in, left = soak.stop() if service.proc and service.proc.poll() is None else (0.0, [])
        print(f"soak: stopped in {stopped_in:.1f}s; processes left after the stop: {left or 'none'}")
        if left:
            problems.append(f"processes left after the stop: {left}")
            for p in processes_in(work):  # ours: they name our temporary folder
                with contextlib.suppress(psutil.Error):
                    p.kill()
    problems += report(soak, started, finished, args.bound)
    soak.rows.engine.dispose()
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        raise SystemExit(f"soak FAILED: {len(problems)} problem(s); folder kept: {work}")
    print("soak: every check passed")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
