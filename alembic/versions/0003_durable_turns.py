"""durable turns: accepted messages as work rows with leases and delivery state

Replaces processed_events: the claim of an event id is the unique (platform, event_id) of its
turn row, which also holds everything needed to answer and deliver it after a crash.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "turns",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=191), nullable=False),
        sa.Column("conversation_id", _ID, nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("user_name", sa.String(length=256), server_default="", nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("is_direct", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("mentions_bot", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("address", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("posted", sa.JSON(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_turns_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turns")),
        sa.UniqueConstraint("platform", "event_id", name=op.f("uq_turns_platform_event_id")),
    )
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_turns_conversation_id_id"), ["conversation_id", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_turns_state_lease_until"), ["state", "lease_until"], unique=False
        )
    op.drop_table("processed_events")


def downgrade() -> None:
    op.create_table(
        "processed_events",
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=191), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("platform", "event_id", name=op.f("pk_processed_events")),
    )
    # A claim survives the downgrade, so no event is answered twice across it.
    op.execute(
        "INSERT INTO processed_events (platform, event_id, created_at) "
        "SELECT platform, event_id, created_at FROM turns"
    )
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_turns_state_lease_until"))
        batch_op.drop_index(batch_op.f("ix_turns_conversation_id_id"))
    op.drop_table("turns")
