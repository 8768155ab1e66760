"""Bearer tokens for the REST API.

The token file has one token per line::

    # TOKEN                             ROLE   [NAME]
    3f9a0c...e1                          admin  ops-automation
    77b2d4...0a                          read   grafana

Roles are `read` (every GET under /v1 and /metrics) and `admin` (also every
change). `#` starts a comment, blank lines are ignored. A malformed line is an
error naming the file and line, never a silently weaker configuration.
Presented tokens are compared with `hmac.compare_digest` against every entry,
so the time taken does not depend on how much of a token matched.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass
from pathlib import Path

# Short tokens are guessable; 16 characters is the least we accept.
TOKEN_MIN_LENGTH = 16


class Role(enum.Enum):
    READ = "read"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.READ


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Token:
    secret: str
    role: Role
    name: str

    def __repr__(self) -> str:  # never print the secret
        return f"Token(role={self.role.value!r}, name={self.name!r})"


@dataclass(frozen=True)
class Tokens:
    """The loaded token file."""

    entries: tuple[Token, ...]
    source: str = "<memory>"

    @classmethod
    def parse(cls, text: str, source: str = "<memory>") -> Tokens:
        entries: list[Token] = []
        seen: dict[str, int] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{number}"
            fields = line.split()
            if len(fields) < 2:
                raise TokenFileError(f"{where}: expected 'TOKEN ROLE [NAME]', got one field")
            if len(fields) > 3:
                raise TokenFileError(
                    f"{where}: expected 'TOKEN ROLE [NAME]', got {len(fields)} fields"
                )
            secret, role_text = fields[0], fields[1]
            try:
                role = Role(role_text)
            except ValueError:
                raise TokenFileError(
                    f"{where}: unknown role {role_text!r} (expected 'read' or 'admin')"
                ) from None
            if len(secret) < TOKEN_MIN_LENGTH:
                raise TokenFileError(
                    f"{where}: token is {len(secret)} characters, at least "
                    f"{TOKEN_MIN_LENGTH} are required"
                )
            if not secret.isascii() or not secret.isprintable():
                raise TokenFileError(f"{where}: token must be printable ASCII")
            if secret in seen:
                raise TokenFileError(f"{where}: duplicate token (first on line {seen[secret]})")
            seen[secret] = number
            name = fields[2] if len(fields) == 3 else f"line-{number}"
            entries.append(Token(secret, role, name))
        if not entries:
            raise TokenFileError(f"{source}: no tokens (an empty token file would lock out all)")
        return cls(tuple(entries), source)

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError(f"{path}: cannot read token file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise TokenFileError(f"{path}: token file is not UTF-8 text") from None
        return cls.parse(text, str(path))

    def lookup(self, presented: str) -> Token | None:
        """The entry whose secret equals `presented`, compared in constant time."""
        wanted = presented.encode("utf-8", "surrogateescape")
        found: Token | None = None
        for entry in self.entries:
            if hmac.compare_digest(entry.secret.encode("utf-8"), wanted):
                found = entry
        return found
