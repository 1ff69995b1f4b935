"""Photos, thumbnails and training plots, served by result id or version name only, from the
folders the service owns."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from moodwatch.images import FORMATS, SIGNATURE_BYTES, sniff_format
from moodwatch.registry import RegistryError
from moodwatch.vocab import Status
from web.state import WebState, db, get_row, web_state
from web.thumbs import owned_file, thumbnail

router = APIRouter(include_in_schema=False)
MEDIA_TYPES = {f.name: f.media_type for f in FORMATS}


@router.get("/thumb/{result_id}")
def thumb(result_id: int, session: Session = Depends(db), state: WebState = Depends(web_state)):
    row = get_row(session, result_id)
    path = thumbnail(state.settings, row.id, row.stored_path)
    if path is None:
        raise HTTPException(404, "no thumbnail for this result")
    return FileResponse(path, media_type="image/jpeg")


@router.get("/image/{result_id}")
def image(result_id: int, session: Session = Depends(db), state: WebState = Depends(web_state)):
    row = get_row(session, result_id)
    path = owned_file(state.settings, row.stored_path)
    if path is None or row.status != Status.CLASSIFIED:
        raise HTTPException(404, "no image for this result")
    with open(path, "rb") as fh:  # the signature only, not a whole photo per request
        head = fh.read(SIGNATURE_BYTES)
    kind = MEDIA_TYPES.get(sniff_format(head) or "", "application/octet-stream")
    return FileResponse(path, media_type=kind)


@router.get("/plots/{version}/{name}")
def plot(version: str, name: str, state: WebState = Depends(web_state)):
    if name not in ("loss.png", "accuracy.png"):
        raise HTTPException(404, "no such plot")
    try:
        v = state.registry.get(version)
    except RegistryError:
        raise HTTPException(404, "no such model version") from None
    path = v.path / name
    if not path.is_file():
        raise HTTPException(404, "no such plot")
    return FileResponse(path, media_type="image/png")
