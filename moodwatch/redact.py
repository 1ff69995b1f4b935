"""Credentials never reach a log line or a status report: URLs are shown with `***` for the
password, whoever formats them."""

from __future__ import annotations

import logging
import re

# scheme://user:password@host  ->  scheme://user:***@host (redis://:password@host too)
_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?=@)")


def mask(text: str) -> str:
    """The text with every password of a URL in it replaced by ***."""
    return _CREDENTIALS.sub(r"\g<head>***", text) if "://" in text else text


_installed = False


def install() -> None:
    """Mask every log record of this process, whichever logger or handler it goes through.

    A record factory rather than a handler filter: filters miss handlers added later (Celery's,
    uvicorn's), a factory sees every record when it is made."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def masked(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = mask(message), ()
        return record

    logging.setLogRecordFactory(masked)
    _installed = True
