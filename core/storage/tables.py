"""The schema, as SQLAlchemy Core tables. Alembic migrations must match it (a test checks)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _now() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


conversations = Table(
    "conversations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("platform", String(32), nullable=False),
    Column("workspace", String(128), nullable=False),
    Column("channel", String(128), nullable=False),
    Column("thread", String(128), nullable=False),
    Column("persona", String(64)),
    # Messages with id > window_start_id are in the window; /reset moves it, deleting nothing.
    Column("window_start_id", BigInteger, nullable=False, server_default="0"),
    Column("summary", Text, nullable=False, server_default=""),
    Column("summary_through_id", BigInteger, nullable=False, server_default="0"),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("platform", "workspace", "channel", "thread"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "conversation_id",
        Id,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("tool_calls", JSON),
    Column("tool_call_id", String(128)),
    Column("author_id", String(128), nullable=False, server_default=""),
    Column("author_name", String(256), nullable=False, server_default=""),
    # Computed once when stored, so building a window never re-tokenizes history.
    Column("token_count", Integer, nullable=False),
    # Images sent with the message: [{"id": attachment id, "tokens": estimated cost, "name"}];
    # NULL for text alone, so a window of text never reads the attachments table.
    Column("images", JSON),
    _now(),
    # The window is read newest-first within one conversation: this index makes it a range scan.
    Index(None, "conversation_id", "id"),
)

channel_settings = Table(
    "channel_settings",
    metadata,
    Column("platform", String(32), nullable=False),
    Column("workspace", String(128), nullable=False),
    Column("channel", String(128), nullable=False),
    Column("persona", String(64)),
    Column("scope", String(16)),
    Column("tools", JSON),
    Column("model", String(128)),
    Column("require_mention", Boolean),
    # Overrides of the settings of the same names; NULL means "use the setting".
    Column("buffer_output", Boolean),
    Column("merge_queued", Boolean),
    Column("user_rpm", Integer),
    Column("user_tokens_per_day", Integer),
    Column("knowledge", JSON),  # knowledge bases' names; NULL: the persona's
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("platform", "workspace", "channel"),
)

# One row per accepted message: the claim of its event id, everything needed to answer it
# later, and where its answer stands. Rows are answered in id order within a conversation.
turns = Table(
    "turns",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # The claim: a redelivery of the same event finds its row and is not answered again.
    Column("platform", String(32), nullable=False),
    Column("event_id", String(191), nullable=False),
    Column(
        "conversation_id",
        Id,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("user_id", String(128), nullable=False),
    Column("user_name", String(256), nullable=False, server_default=""),
    Column("text", Text, nullable=False),
    Column("is_direct", Boolean, nullable=False, server_default=false()),
    Column("mentions_bot", Boolean, nullable=False, server_default=false()),
    # Where the answer goes on the platform (channel, thread, message ids...): the adapter's.
    Column("address", JSON, nullable=False),
    # pending -> running -> replied -> delivered | undelivered (see core/storage/base.py).
    Column("state", String(16), nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),  # epoch seconds
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("message_id", BigInteger),  # the user's message once stored in `messages`
    Column("reply", Text),  # what the user is shown in the end, once the turn has run
    Column("posted", JSON),  # the platform ids of the messages showing the reply
    Column("finished_at", Float),  # epoch seconds; finished rows are pruned after a while
    # Answered as part of that later turn of the conversation (a channel that merges messages
    # queued during a turn): it follows that turn's lease and delivery.
    Column("merged_into", BigInteger),
    # Files, images and voice notes sent with the message, as the adapter can fetch them
    # ([{"kind", "name", "mime", "size", "ref"}]): whichever process answers downloads them.
    Column("attachments", JSON),
    _now(),
    UniqueConstraint("platform", "event_id"),
    Index(None, "conversation_id", "id"),
    Index(None, "state", "lease_until"),
    Index(None, "merged_into"),
)

# What a user sent besides text, kept after the turn: images (downscaled, re-sent to the model
# while they fit the window); voice notes and files leave a row without data (their transcript
# or text is the message's content). Deleted with the conversation, or by /forget.
attachments = Table(
    "attachments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "conversation_id",
        Id,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("message_id", BigInteger),  # the user's message in `messages`
    Column("platform", String(32), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("kind", String(8), nullable=False),  # image, audio or file
    Column("name", String(256), nullable=False, server_default=""),
    Column("mime", String(128), nullable=False, server_default=""),
    Column("size", Integer, nullable=False, server_default="0"),  # bytes as received
    Column("tokens", Integer, nullable=False, server_default="0"),  # an image's estimated cost
    Column("data", LargeBinary),  # an image as sent to the model; NULL for audio and files
    _now(),
    Index(None, "conversation_id"),
    Index(None, "platform", "user_id"),
)

usage = Table(
    "usage",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "conversation_id",
        Id,
        ForeignKey("conversations.id", ondelete="SET NULL"),
    ),
    Column("platform", String(32), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("estimated", Boolean, nullable=False, server_default=false()),
    Column("cost_usd", Float),
    _now(),
    Index(None, "platform", "user_id", "created_at"),
    Index(None, "conversation_id"),
)

moderation_flags = Table(
    "moderation_flags",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "conversation_id",
        Id,
        ForeignKey("conversations.id", ondelete="SET NULL"),
    ),
    Column("platform", String(32), nullable=False),
    Column("workspace", String(128), nullable=False),
    Column("channel", String(128), nullable=False),
    Column("thread", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("direction", String(8), nullable=False),
    # The strongest action taken: block, redact, flag, or unchecked (moderation unavailable).
    Column("action", String(16), nullable=False),
    Column("categories", JSON, nullable=False),  # ["pii/email", "openai/harassment"]
    Column("scores", JSON, nullable=False),  # {"openai/harassment": 0.91}
    # What was checked, with personal data scrubbed, so a reviewer can judge the flag.
    Column("excerpt", Text, nullable=False, server_default=""),
    _now(),
    # A person's review in the admin console: dismissed or confirmed; NULL: not yet reviewed.
    Column("review", String(16)),
    Column("reviewed_by", String(128), nullable=False, server_default=""),
    Column("reviewed_at", DateTime(timezone=True)),
    Index(None, "created_at"),
    Index(None, "platform", "user_id"),
)

# Keys for the HTTP API: only a SHA-256 of each is kept (keys are 256 random bits, so a fast
# hash is as safe as a slow one). The name is the key's user for limits and budgets.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # shown in `parley keys list`
    Column("admin", Boolean, nullable=False, server_default=false()),
    _now(),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

access_rules = Table(
    "access_rules",
    metadata,
    Column("platform", String(32), nullable=False),  # "" matches every platform
    Column("kind", String(16), nullable=False),  # user, channel or workspace
    Column("value", String(128), nullable=False),
    Column("list", String(8), nullable=False),  # allow or block
    Column("added_by", String(128), nullable=False, server_default=""),
    _now(),
    PrimaryKeyConstraint("platform", "kind", "value", "list"),
)

# One row per request admitted under a per-minute limit; rows older than the window are
# pruned as the same user's next request is admitted, so the table stays small.
user_requests = Table(
    "user_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("platform", String(32), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "platform", "user_id", "created_at"),
)

# Knowledge bases: each added file or page is a document, split into chunks with their
# embedding vectors (float32 bytes, L2-normalised). The embedding model is recorded per
# document, so vectors of two models are never compared.
kb_documents = Table(
    "kb_documents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kb", String(64), nullable=False),
    Column("source", String(1024), nullable=False),  # an absolute path or a URL
    Column("title", String(512), nullable=False, server_default=""),
    Column("content_hash", String(64), nullable=False),
    Column("embedding_model", String(128), nullable=False),
    Column("chunk_count", Integer, nullable=False),
    _now(),
    UniqueConstraint("kb", "source"),
)

kb_chunks = Table(
    "kb_chunks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "document_id",
        Id,
        ForeignKey("kb_documents.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kb", String(64), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("section", String(512), nullable=False, server_default=""),  # "Setup > Install"
    Column("text", Text, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Index(None, "kb", "id"),
    Index(None, "document_id"),
)
