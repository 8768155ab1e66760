"""The vxsnd instances serving the registry (service_nodes), for the status page;
each node's last accepted register envelope (nodes.last_seq, nodes.last_sent_ms), so
a replay is refused across a vxsnd restart.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite does it in place; batch mode would recreate `nodes`,
    # which the foreign keys of node_vnis and members forbid)
    for name in ("last_seq", "last_sent_ms"):
        op.add_column(
            "nodes", sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    op.create_table(
        "service_nodes",
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("endpoints", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_service_nodes")),
    )


def downgrade() -> None:
    op.drop_table("service_nodes")
    op.drop_column("nodes", "last_sent_ms")
    op.drop_column("nodes", "last_seq")
