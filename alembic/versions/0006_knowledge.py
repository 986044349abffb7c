"""knowledge bases: documents and their chunks with embedding vectors, a channel's choice

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kb_documents",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("kb", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("title", sa.String(length=512), server_default="", nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("embedding_model", sa.String(length=128), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_documents")),
        sa.UniqueConstraint("kb", "source", name=op.f("uq_kb_documents_kb_source")),
    )
    op.create_table(
        "kb_chunks",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("document_id", Id, nullable=False),
        sa.Column("kb", sa.String(length=64), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("section", sa.String(length=512), server_default="", nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["kb_documents.id"],
            name=op.f("fk_kb_chunks_document_id_kb_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_chunks")),
    )
    op.create_index(op.f("ix_kb_chunks_kb_id"), "kb_chunks", ["kb", "id"], unique=False)
    op.create_index(op.f("ix_kb_chunks_document_id"), "kb_chunks", ["document_id"], unique=False)
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("knowledge", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.drop_column("knowledge")
    op.drop_index(op.f("ix_kb_chunks_document_id"), table_name="kb_chunks")
    op.drop_index(op.f("ix_kb_chunks_kb_id"), table_name="kb_chunks")
    op.drop_table("kb_chunks")
    op.drop_table("kb_documents")
