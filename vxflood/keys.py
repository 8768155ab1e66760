"""The key file, as both daemons load it at start and re-read it on SIGHUP."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vxflood.lifecycle import EXIT_CONFIG, StartupError
from vxflood.schema.keys import KeyFileError, Keyring, load_key_file
from vxflood.schema.wire import Codec


def load_keys(path: Path | None, log: logging.Logger) -> Keyring | None:
    """The keyring at start (None without a key file: unsigned, with a warning).

    A file that cannot be used is a configuration error (exit 2) naming the file."""
    if path is None:
        log.warning("no key file: datagrams are neither signed nor verified")
        return None
    try:
        return load_key_file(path, log)
    except (KeyFileError, OSError) as exc:
        raise StartupError(f"configuration error: {exc}", EXIT_CONFIG) from None


def key_reloader(
    path: Path, use: Callable[[Codec], None], log: logging.Logger
) -> Callable[[], None]:
    """A Lifecycle reload hook: re-read `path` and hand the new codec to `use`.

    It raises (and the caller keeps the keys in force) when the file cannot be used."""

    def reload() -> None:
        keyring = load_key_file(path, log)
        use(Codec(keyring))
        log.info(
            "keys reloaded from %s: %d key(s), signing with %s",
            path,
            len(keyring),
            keyring.signing.key_id,
        )

    return reload
