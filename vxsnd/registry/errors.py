"""Why the registry cannot be used; every message is one line an operator can act on."""

from __future__ import annotations

__all__ = [
    "RegistryError",
    "RegistryLost",
    "RegistryMissing",
    "RegistryUnreadable",
    "SchemaError",
    "SchemaOutdated",
    "SchemaUnknown",
]


class RegistryError(RuntimeError):
    """The registry cannot be used as it is; the message says why and what to do."""


class SchemaError(RegistryError):
    """The database is not a registry at the schema revision this vxsnd needs."""


class SchemaOutdated(SchemaError):
    """The registry is at an older revision: `vxsnd db upgrade` fixes it."""


class SchemaUnknown(SchemaError):
    """Not a vxsnd registry, or written by a newer vxsnd (unknown revision)."""


class RegistryMissing(SchemaError):
    """Opened without `create` on an empty database."""


class RegistryUnreadable(SchemaError):
    """The database cannot be opened or read at all (permissions, not a database file)."""


class RegistryLost(RegistryError):
    """The registry this vxsnd opened went away under it (file removed or replaced,
    registry id changed); writes are refused until a registry is back."""
