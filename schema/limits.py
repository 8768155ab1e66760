"""Sizes and codes of the registry's columns, with no SQL attached.

`schema.tables` builds the SQL tables from these; the registry's write model
(`vxsnd.registry.model`) validates against them without importing SQLAlchemy.
"""

from __future__ import annotations

from typing import Final

NODE_ID_MAX: Final = 64
ADDRESS_MAX: Final = 45
DESCRIPTION_MAX: Final = 255

ORIGIN_REGISTERED: Final = "registered"
ORIGIN_STATIC: Final = "static"
OP_ADD: Final = "add"
OP_DEL: Final = "del"
