"""Initial registry: meta, vnis, nodes, members, changes, node_vnis.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_meta")),
    )
    op.create_table(
        "vnis",
        sa.Column("vni", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint("generation >= 0", name=op.f("ck_vnis_generation_nonneg")),
        sa.CheckConstraint("vni >= 1 AND vni <= 16777215", name=op.f("ck_vnis_vni_range")),
        sa.PrimaryKeyConstraint("vni", name=op.f("pk_vnis")),
    )
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("incarnation", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("hold_time", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("registered_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_nodes")),
    )
    op.create_index(op.f("ix_nodes_expires_at"), "nodes", ["expires_at"])
    op.create_table(
        "members",
        sa.Column("vni", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "(origin = 'static' AND node_id IS NULL)"
            " OR (origin = 'registered' AND node_id IS NOT NULL)",
            name=op.f("ck_members_owner"),
        ),
        sa.CheckConstraint("origin IN ('registered', 'static')", name=op.f("ck_members_origin")),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_members_node_id_nodes")
        ),
        sa.ForeignKeyConstraint(["vni"], ["vnis.vni"], name=op.f("fk_members_vni_vnis")),
        sa.PrimaryKeyConstraint("vni", "address", name=op.f("pk_members")),
    )
    op.create_index(
        op.f("ix_members_expires_at"),
        "members",
        ["expires_at"],
        sqlite_where=sa.text("expires_at IS NOT NULL"),
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index(op.f("ix_members_node_id"), "members", ["node_id"])
    op.create_table(
        "changes",
        sa.Column("vni", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("op", sa.String(length=3), nullable=False),
        sa.CheckConstraint("op IN ('add', 'del')", name=op.f("ck_changes_op")),
        sa.ForeignKeyConstraint(["vni"], ["vnis.vni"], name=op.f("fk_changes_vni_vnis")),
        sa.PrimaryKeyConstraint("vni", "generation", "address", name=op.f("pk_changes")),
    )
    op.create_table(
        "node_vnis",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("vni", sa.Integer(), nullable=False),
        sa.Column("local_address", sa.String(length=45), nullable=False),
        sa.Column("applied_generation", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.node_id"],
            name=op.f("fk_node_vnis_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["vni"], ["vnis.vni"], name=op.f("fk_node_vnis_vni_vnis")),
        sa.PrimaryKeyConstraint("node_id", "vni", name=op.f("pk_node_vnis")),
    )
    op.create_index(op.f("ix_node_vnis_vni_local_address"), "node_vnis", ["vni", "local_address"])


def downgrade() -> None:
    op.drop_index(op.f("ix_node_vnis_vni_local_address"), table_name="node_vnis")
    op.drop_table("node_vnis")
    op.drop_table("changes")
    op.drop_index(op.f("ix_members_node_id"), table_name="members")
    op.drop_index(op.f("ix_members_expires_at"), table_name="members")
    op.drop_table("members")
    op.drop_index(op.f("ix_nodes_expires_at"), table_name="nodes")
    op.drop_table("nodes")
    op.drop_table("vnis")
    op.drop_table("meta")
