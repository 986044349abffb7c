"""moderation flags, access rules, request log, channel limits

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("buffer_output", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("user_rpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("user_tokens_per_day", sa.Integer(), nullable=True))

    op.create_table(
        "moderation_flags",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("conversation_id", _ID, nullable=True),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("workspace", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=128), nullable=False),
        sa.Column("thread", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("excerpt", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_moderation_flags_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_moderation_flags")),
    )
    with op.batch_alter_table("moderation_flags", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_moderation_flags_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_moderation_flags_platform_user_id"),
            ["platform", "user_id"],
            unique=False,
        )

    op.create_table(
        "access_rules",
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("list", sa.String(length=8), nullable=False),
        sa.Column("added_by", sa.String(length=128), server_default="", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("platform", "kind", "value", "list", name=op.f("pk_access_rules")),
    )

    op.create_table(
        "user_requests",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_requests")),
    )
    with op.batch_alter_table("user_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_user_requests_platform_user_id_created_at"),
            ["platform", "user_id", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("user_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_requests_platform_user_id_created_at"))
    op.drop_table("user_requests")
    op.drop_table("access_rules")
    with op.batch_alter_table("moderation_flags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_moderation_flags_platform_user_id"))
        batch_op.drop_index(batch_op.f("ix_moderation_flags_created_at"))
    op.drop_table("moderation_flags")
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.drop_column("user_tokens_per_day")
        batch_op.drop_column("user_rpm")
        batch_op.drop_column("buffer_output")
