"""The one admission path for a file from outside (moodwatch.admission.admit): what it admits,
what it refuses and in which words, and that nothing swapped in after its first look (a FIFO, a
linked folder) can hang it or lead it outside its folder. The watcher's check and the trainer's
cleaning give the same words, since they go through it."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from moodwatch.admission import (
    LINK,
    NOT_REGULAR,
    OUTSIDE,
    Admitted,
    FileRefused,
    Limits,
    Refused,
    admit,
    read_regular_file,
    too_large,
)
from moodwatch.files import event_id_for
from tests.imagegen import encode, face_like, write_image
from trainer.cleaning import unusable_reason
from watcher.validation import check_arrival

LIMITS = Limits(max_bytes=1_000_000, max_pixels=10_000_000)


def _bounded(call, seconds: float = 10.0, unblock: Path | None = None):
    """call() in a thread; fails (rather than hangs the suite) if it does not return in time. A
    reader stuck on the FIFO `unblock` is released by opening it for writing."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"still blocked after {seconds}s")
    return result[0]


def _swap_after_lstat(monkeypatch, path: Path, swap) -> None:
    """Run swap() right after the first lstat of `path`: what the path names changes between
    the look and the open."""
    real_lstat = os.lstat
    done = []

    def lstat(p, *args, **kwargs):
        st = real_lstat(p, *args, **kwargs)
        if not done and os.fspath(p) == str(path):
            done.append(True)
            swap()
        return st

    monkeypatch.setattr(os, "lstat", lstat)


def test_a_photo_is_admitted_with_its_bytes_hash_and_header(tmp_path):
    photo = write_image(tmp_path / "a.png", face_like("happy", 1))
    got = admit(str(photo), tmp_path, LIMITS)
    assert isinstance(got, Admitted)
    data = photo.read_bytes()
    assert got.data == data and got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.event_id == event_id_for(str(photo), os.lstat(photo))
    assert (got.image.format, got.image.width, got.image.height) == ("png", 96, 96)


def test_a_file_gone_before_the_look_is_none(tmp_path):
    assert admit(str(tmp_path / "gone.jpg"), tmp_path, LIMITS) is None


def _refusals(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """One file of each kind that is refused, with the words for it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = write_image(outside / "t.png", face_like("happy", 2))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "link.png").symlink_to(target)
    os.mkfifo(folder / "pipe.png")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "empty.png").write_bytes(b"")
    big = folder / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * LIMITS.max_bytes)
    (folder / "text.jpg").write_text("a text file wearing a jpg name")
    return {
        "link": (folder / "link.png", LINK),
        "fifo": (folder / "pipe.png", NOT_REGULAR),
        "extension": (folder / "notes.txt",
                      "file type '.txt' is not accepted: the extension must be jpg, jpeg, png or bmp"),
        "empty": (folder / "empty.png", "empty file (0 bytes)"),
        "too large": (big, too_large(big.stat().st_size, LIMITS.max_bytes)),
        "not an image": (folder / "text.jpg",
                         "not a JPEG, PNG or BMP image (its bytes have no image signature)"),
    }


@pytest.mark.parametrize("kind", ["link", "fifo", "extension", "empty", "too large", "not an image"])
def test_each_refusal_has_one_wording_for_the_watcher_and_the_trainer(tmp_path, kind):
    path, words = _refusals(tmp_path)[kind]
    got = _bounded(lambda: admit(str(path), path.parent, LIMITS))
    assert isinstance(got, Refused) and got.reason == words
    assert got.event_id == event_id_for(str(path), os.lstat(path))
    checked = check_arrival(str(path), path.parent, LIMITS.max_bytes, LIMITS.max_pixels)
    assert checked is not None and checked.rejected == words and checked.sha256 is None
    assert _bounded(lambda: unusable_reason(path, LIMITS.max_pixels, LIMITS.max_bytes)) == words


def test_a_path_through_a_linked_folder_out_of_the_root_is_refused(tmp_path):
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    write_image(elsewhere / "a.png", face_like("sad", 3))
    (inbox / "linked").symlink_to(elsewhere, target_is_directory=True)
    got = admit(str(inbox / "linked" / "a.png"), inbox, LIMITS)
    assert isinstance(got, Refused) and got.reason == OUTSIDE
    # Without a root (the trainer's folders) the same file is admitted.
    assert isinstance(admit(str(inbox / "linked" / "a.png"), None, LIMITS), Admitted)


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def test_a_fifo_swapped_in_after_the_look_is_refused_and_never_blocks(tmp_path, monkeypatch):
    photo = write_image(tmp_path / "a.png", face_like("happy", 4))
    _swap_after_lstat(monkeypatch, photo, lambda: _replace_with_fifo(photo))
    got = _bounded(lambda: admit(str(photo), tmp_path, LIMITS), unblock=photo)
    assert isinstance(got, Refused) and got.reason == NOT_REGULAR


def test_the_watchers_check_is_never_blocked_by_a_fifo_swapped_in(tmp_path, monkeypatch):
    photo = write_image(tmp_path / "a.png", face_like("happy", 5))
    _swap_after_lstat(monkeypatch, photo, lambda: _replace_with_fifo(photo))
    checked = _bounded(lambda: check_arrival(str(photo), tmp_path, LIMITS.max_bytes, LIMITS.max_pixels),
                       unblock=photo)
    assert checked is not None and checked.rejected == NOT_REGULAR


def test_a_link_swapped_in_after_the_look_is_refused_not_followed(tmp_path, monkeypatch):
    photo = write_image(tmp_path / "a.png", face_like("happy", 6))
    target = write_image(tmp_path / "target.png", face_like("sad", 6))

    def to_link():
        photo.unlink()
        photo.symlink_to(target)

    _swap_after_lstat(monkeypatch, photo, to_link)
    got = admit(str(photo), tmp_path, LIMITS)
    assert isinstance(got, Refused) and got.reason == LINK


def test_a_folder_swapped_for_a_link_after_the_look_is_refused_by_where_the_file_lies(
        tmp_path, monkeypatch):
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    photo = write_image(inbox / "day" / "a.png", face_like("happy", 7))
    write_image(elsewhere / "a.png", face_like("sad", 7))
    real_open = os.open

    def open_after_swap(path, flags, *args, **kwargs):
        if os.fspath(path) == str(photo) and not (inbox / "day").is_symlink():
            (inbox / "day").rename(tmp_path / "day-away")
            (inbox / "day").symlink_to(elsewhere, target_is_directory=True)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_after_swap)
    got = admit(str(photo), inbox, LIMITS)
    assert isinstance(got, Refused) and got.reason == OUTSIDE


def test_the_read_holds_no_more_than_the_limit_whatever_the_size_said(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat

    def fstat_says_small(fd):  # a file that grows after its size was asked
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                               10, st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(os, "fstat", fstat_says_small)
    with pytest.raises(FileRefused) as refused:
        read_regular_file(str(path), 50)
    assert refused.value.reason == too_large(0, 50, at_least=True) == \
        "file too large: more than 50 bytes (limit 50)"


def test_the_trainer_still_decodes_what_the_header_vouches_for(tmp_path):
    """A PNG whose header and end chunk read well but whose pixel data is garbage passes the
    admission (a header check) and is still refused by the trainer's whole decode."""
    png = encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), ".png")
    i = png.index(b"IDAT") + 4
    path = tmp_path / "garbled.png"
    path.write_bytes(png[:i] + bytes(b ^ 0x55 for b in png[i:i + 200]) + png[i + 200:])
    assert isinstance(admit(str(path), None, LIMITS), Admitted)
    assert unusable_reason(path, LIMITS.max_pixels) == "corrupt PNG data (the decoder could not read it)"


def test_labelling_admits_the_photo_as_every_outside_file_is(tmp_path):
    """`moodwatch label` and the review page copy through moodwatch.curation.label_file: a link is
    refused in the admission's words (it used to be followed, its target copied), and what is
    copied is the bytes that were checked."""
    from moodwatch.curation import label_file
    from moodwatch.images import ImageRejected
    from moodwatch.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    photo = write_image(tmp_path / "photo.jpg", face_like("happy", 3, 96))
    link = tmp_path / "link.jpg"
    link.symlink_to(photo)
    with pytest.raises(ImageRejected, match="symbolic link"):
        label_file(settings, link, "happy")
    assert not (tmp_path / "data" / "happy").exists() or not any((tmp_path / "data" / "happy").iterdir())
    dest = label_file(settings, photo, "happy")
    assert dest.read_bytes() == photo.read_bytes() and dest.parent == tmp_path / "data" / "happy"
