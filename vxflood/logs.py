"""Logging of both daemons: one line per record on stderr, for journald or a shipper.

- Under systemd with stderr connected to the journal (`$JOURNAL_STREAM` names
  stderr's device and inode) every line starts with its sd-daemon priority
  (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so
  `journalctl -p warning` finds the warnings.
- `--log-format json`: one JSON object per line (time, level, logger, message,
  and the exception text when there is one) for log shippers.
- Third-party INFO chatter (aiohttp's access log, alembic's "Context impl ...")
  stays out; their warnings still come through.

Secrets never reach a log line through here: database URLs are logged with
`mask_url`, key and token files are named, never printed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO
from urllib.parse import quote, unquote

LOG_FORMATS = ("text", "json")
QUIET_LIBRARIES = ("aiohttp", "alembic", "sqlalchemy", "asyncio")

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def parse_log_format(value: object) -> str:
    """The log_format option of both daemons (a TOML value or a flag's text)."""
    if not isinstance(value, str) or value.lower() not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value.lower()


def syslog_priority(levelno: int) -> int:
    """The sd-daemon/syslog priority of a logging level (custom levels round down)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def stderr_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    env = os.environ if environ is None else environ
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """`<priority>LEVEL logger: message`; continuation lines get the prefix too."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, newlines inside values escaped by json."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "priority": syslog_priority(record.levelno),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
_handler: logging.Handler | None = None


def make_formatter(
    fmt: str, stream: TextIO, environ: Mapping[str, str] | None = None
) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if stderr_is_journal(stream, environ):
        return JournalFormatter(TEXT_FORMAT)
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Both daemons, once at start: the root logger writes to stderr at `level`."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt, stream))
    root = logging.getLogger()
    global _handler
    if _handler is not None:  # set up again (tests): replace ours, keep anyone else's
        root.removeHandler(_handler)
    _handler = handler
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def mask_url(url: str) -> str:
    """A database URL fit for a log line or an error message: the password is `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostpart = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    masked = f"{user}:***" if colon else user
    return f"{scheme}://{masked}@{hostpart}{slash}{path}"


def redact(text: str, url: str) -> str:
    """`text` (say, a driver's error message) with the password of `url` masked."""
    password = _password(url)
    if not password:
        return text
    text = text.replace(url, mask_url(url))
    return text.replace(password, "***").replace(quote(password, safe=""), "***")


def _password(url: str) -> str:
    _scheme, sep, rest = url.partition("://")
    userinfo, at, _host = rest.partition("/")[0].rpartition("@")
    if not sep or not at:
        return ""
    return unquote(userinfo.partition(":")[2])
