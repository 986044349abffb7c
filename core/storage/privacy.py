"""What Parley keeps about a person, and removing it: `/forget`, `parley export`, retention.

A person is a user id on one platform (ids of different platforms are different people).
What is "about them" (`/forget` deletes it, `parley export` writes it out):

- conversations where they are the only person who wrote (a DM, a private thread, an API
  user's conversations): the whole conversation, with the bot's replies, tool calls, its
  summary and its row;
- in conversations shared with other people: their messages and the bot's reply to each
  (everything up to the next person's message: the reply, tool calls and results), and the
  summary when it was built from any of those (cleared; the engine builds a new one from the
  messages that remain);
- their images and files (`attachments`), their turns (`turns.text` is the raw message),
  usage rows, moderation flags (with excerpts of their words), and rate-limit records.

Kept: other people's messages, access-list entries naming them (an admin's decision: a
block must survive a /forget), channel settings (also a DM's: they hold a choice such as a
persona, nothing they wrote) and API keys (the operator's).

Each operation is one transaction, with deletes in batches of ids so no statement carries
an unbounded list; retention purges a batch per transaction, so a large backlog never holds
locks for long and processes purging at once only repeat each other's (idempotent) deletes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ColumnElement

from core.storage.base import TurnState
from core.storage.sql import SqlStore, _aware, _utc
from core.storage.tables import (
    access_rules,
    attachments,
    channel_settings,
    conversations,
    messages,
    moderation_flags,
    turns,
    usage,
    user_requests,
)

__all__ = ["EXPORT_FORMAT", "Forgotten", "Privacy", "Purged"]

EXPORT_FORMAT = "parley-export/1"
BATCH = 500  # ids per statement: far below every driver's parameter limit
# A conversation row no platform uses, holding the highest conversation id deleted (SQLite).
ID_WATERMARK = {"platform": "", "workspace": "", "channel": "", "thread": "parley:deleted-ids"}
# Where the turn of a `/forget confirm` waits for its answer once its conversation is deleted.
FORGOTTEN_THREAD = "parley:forgotten"


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What a /forget deleted (counts of rows)."""

    conversations: int  # deleted whole
    messages: int
    attachments: int
    turns: int
    usage: int
    flags: int
    summaries_cleared: int  # of conversations shared with others


@dataclass(frozen=True, slots=True)
class Purged:
    """What one retention run deleted (counts of rows)."""

    messages: int = 0
    attachments: int = 0
    turns: int = 0
    usage: int = 0
    flags: int = 0
    requests: int = 0
    conversations: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def total(self) -> int:
        return sum(astuple(self))


@dataclass(frozen=True, slots=True)
class _Theirs:
    """A person's part of the conversations on one platform."""

    private: list[int]  # conversation ids where nobody else wrote
    shared: list[int]  # conversation ids with other people's messages too
    shared_messages: list[tuple[int, int]]  # (conversation id, message id) in shared ones


class Privacy:
    """A person's data: forgetting it, exporting it, and purging old data for everyone,
    in the store's transactions (same retries, same SQLite thread)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    # --- /forget ------------------------------------------------------------------------------

    async def forget(
        self,
        *,
        platform: str,
        user_id: str,
        keep_event: str | None = None,
        keep_usage_since: datetime | None = None,
    ) -> Forgotten:
        """Delete what is stored about `user_id` on `platform` (see the module's docstring).

        Args:
            platform: The platform the user id belongs to.
            user_id: Their id there.
            keep_event: The event id of the turn asking for this (`/forget confirm`): its row
                stays, or the turn could not store its answer. When its conversation goes,
                the row moves to a conversation of the platform's own (`FORGOTTEN_THREAD`);
                it holds only the command and goes with the finished turns
                (PARLEY_KEEP_FINISHED_HOURS).
            keep_usage_since: Usage rows from then on stay, detached from any conversation:
                token counts only, so that a /forget does not reset a daily budget.
        """

        def work(connection: Connection) -> Forgotten:
            theirs = _their_part(connection, platform, user_id)
            t = turns.c
            if keep_event is not None:
                # Deleting its conversation would delete the turn with it (ON DELETE CASCADE).
                connection.execute(
                    update(turns)
                    .where(
                        t.platform == platform,
                        t.event_id == keep_event,
                        t.conversation_id.in_(theirs.private),
                    )
                    .values(conversation_id=_forgotten_conversation(connection, platform))
                )

            # Turns first: a turn merged into one of theirs must be free to run again alone.
            mine = and_(t.platform == platform, t.user_id == user_id)
            if keep_event is not None:
                mine = and_(mine, t.event_id != keep_event)
            turn_ids = list(connection.execute(select(t.id).where(mine)).scalars())
            for chunk in _chunks(turn_ids):
                connection.execute(
                    update(turns).where(t.merged_into.in_(chunk)).values(merged_into=None)
                )
            deleted_turns = _delete_in(connection, turns.c.id, turn_ids)

            a = attachments.c
            deleted_attachments = connection.execute(
                delete(attachments).where(a.platform == platform, a.user_id == user_id)
            ).rowcount
            whole = theirs.private
            deleted_attachments += _delete_in(connection, a.conversation_id, whole)
            deleted_messages = _delete_in(connection, messages.c.conversation_id, whole)
            message_ids = [message_id for _, message_id in theirs.shared_messages]
            deleted_attachments += _delete_in(connection, a.message_id, message_ids)
            deleted_messages += _delete_in(connection, messages.c.id, message_ids)

            f = moderation_flags.c
            deleted_flags = connection.execute(
                delete(moderation_flags).where(f.platform == platform, f.user_id == user_id)
            ).rowcount
            deleted_flags += _delete_in(connection, f.conversation_id, whole)

            u = usage.c
            spent = and_(u.platform == platform, u.user_id == user_id)
            old = (
                spent
                if keep_usage_since is None
                else and_(spent, u.created_at < _utc(keep_usage_since))
            )
            deleted_usage = connection.execute(delete(usage).where(old)).rowcount
            connection.execute(update(usage).where(spent).values(conversation_id=None))
            r = user_requests.c
            connection.execute(
                delete(user_requests).where(r.platform == platform, r.user_id == user_id)
            )

            deleted_conversations = _delete_in(connection, conversations.c.id, whole)
            _hold_ids(connection, whole)
            cleared = _clear_summaries(connection, theirs.shared_messages)
            _invalidate_windows(connection, theirs.shared)
            return Forgotten(
                conversations=deleted_conversations,
                messages=deleted_messages,
                attachments=deleted_attachments,
                turns=deleted_turns,
                usage=deleted_usage,
                flags=deleted_flags,
                summaries_cleared=cleared,
            )

        return await self._store.run(work)

    async def budgets_apply(self, *, platform: str, default_tokens_per_day: int) -> bool:
        """Whether a daily token budget may apply to someone on `platform`: the setting, or
        any channel's own budget there."""
        if default_tokens_per_day > 0:
            return True
        s = channel_settings.c
        statement = select(exists().where(s.platform == platform, s.user_tokens_per_day > 0))
        return bool(await self._store.run(lambda cx: cx.execute(statement).scalar(), write=False))

    # --- parley export ------------------------------------------------------------------------

    async def export(
        self, *, user_id: str, platform: str | None = None, attachment_data: bool = True
    ) -> dict[str, Any]:
        """Everything `forget` would delete about `user_id`, as JSON-ready data, plus the
        access-list entries naming them. Without `platform`: on every platform where the id
        appears. Images are base64 unless `attachment_data` is False."""

        def work(connection: Connection) -> dict[str, Any]:
            platforms = [platform] if platform else _platforms_of(connection, user_id)
            data: dict[str, Any] = {
                "format": EXPORT_FORMAT,
                "user_id": user_id,
                "platforms": platforms,
                "conversations": [],
                "attachments": [],
                "turns": [],
                "usage": [],
                "moderation_flags": [],
                "access_rules": [],
            }
            for name in platforms:
                _export_platform(connection, data, name, user_id, attachment_data)
            a = access_rules.c
            rules = connection.execute(
                select(a.platform, a.list, a.added_by, a.created_at)
                .where(a.kind == "user", a.value == user_id, a.platform.in_(["", *platforms]))
                .order_by(a.platform, a.list)
            )
            data["access_rules"] = [
                {
                    "platform": row.platform,
                    "list": row.list,
                    "added_by": row.added_by,
                    "created_at": _time(row.created_at),
                }
                for row in rules
            ]
            return data

        return await self._store.run(work, write=False)

    # --- retention ----------------------------------------------------------------------------

    async def purge(self, *, before: datetime, batch: int = 5000) -> Purged:
        """Delete messages, attachments, finished turns, usage, moderation flags and
        rate-limit records created before `before`, and conversations idle since then with
        nothing left in them. Summaries of conversations still in use stay (see README).

        Runs transactions of at most `batch` rows per table until nothing is left."""
        cutoff = _utc(before)
        total = Purged()
        while True:
            purged = await self._store.run(lambda c: _purge_batch(c, cutoff, batch))
            total += purged
            if purged.total == 0:
                return total


def _their_part(connection: Connection, platform: str, user_id: str) -> _Theirs:
    c, m, t, a, f = conversations.c, messages.c, turns.c, attachments.c, moderation_flags.c
    on_platform = c.platform == platform
    touched = (
        select(m.conversation_id)
        .join(conversations, c.id == m.conversation_id)
        .where(on_platform, m.role == "user", m.author_id == user_id)
        .union(
            select(t.conversation_id).where(t.platform == platform, t.user_id == user_id),
            select(a.conversation_id).where(a.platform == platform, a.user_id == user_id),
            select(f.conversation_id).where(
                f.platform == platform, f.user_id == user_id, f.conversation_id.is_not(None)
            ),
        )
    )
    conversation_ids = sorted(
        int(i)
        for i in connection.execute(
            select(c.id).where(c.id.in_(touched), c.thread != FORGOTTEN_THREAD)
        ).scalars()
    )
    shared: list[int] = []
    for chunk in _chunks(conversation_ids):
        # "" is no one in particular: history an API client sent along with its request.
        others = (
            select(m.conversation_id)
            .where(
                m.conversation_id.in_(chunk), m.role == "user", m.author_id.not_in([user_id, ""])
            )
            .union(
                select(t.conversation_id).where(t.conversation_id.in_(chunk), t.user_id != user_id)
            )
        )
        shared.extend(int(i) for i in connection.execute(others).scalars())
    shared.sort()
    with_others = set(shared)
    private = [i for i in conversation_ids if i not in with_others]
    shared_messages: list[tuple[int, int]] = []
    for chunk in _chunks(shared):
        shared_messages.extend(_exchanges(connection, chunk, user_id))
    return _Theirs(private=private, shared=shared, shared_messages=shared_messages)


def _exchanges(
    connection: Connection, conversation_ids: Sequence[int], user_id: str
) -> Iterator[tuple[int, int]]:
    """(conversation id, message id) of their messages and of the bot's messages answering
    them: those after one of theirs and before the next person's message."""
    m = messages.c
    asker = messages.alias("asker")
    # Who wrote the person's message this one follows (the (conversation_id, id) index).
    answered = (
        select(asker.c.author_id)
        .where(
            asker.c.conversation_id == m.conversation_id,
            asker.c.role == "user",
            asker.c.id < m.id,
        )
        .order_by(asker.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = connection.execute(
        select(m.conversation_id, m.id)
        .where(
            m.conversation_id.in_(conversation_ids),
            or_(
                and_(m.role == "user", m.author_id == user_id),
                and_(m.role != "user", answered == user_id),
            ),
        )
        .order_by(m.id)
    )
    for row in rows:
        yield int(row.conversation_id), int(row.id)


def _clear_summaries(connection: Connection, deleted: Sequence[tuple[int, int]]) -> int:
    """Clear the summaries that were built from any of the deleted messages; the engine
    folds the remaining messages into a new one when they fall out of the window."""
    earliest: dict[int, int] = {}
    for conversation_id, message_id in deleted:
        earliest[conversation_id] = min(earliest.get(conversation_id, message_id), message_id)
    cleared = 0
    c = conversations.c
    for conversation_id, message_id in sorted(earliest.items()):
        cleared += connection.execute(
            update(conversations)
            .where(c.id == conversation_id, c.summary != "", c.summary_through_id >= message_id)
            .values(summary="", summary_through_id=0)
        ).rowcount
    return cleared


def _invalidate_windows(connection: Connection, conversation_ids: Iterable[int]) -> None:
    """Make every process read these conversations' windows afresh.

    Each process caches a conversation's last window (core/context.py `WindowCache`) and,
    on the next turn, reads only messages newer than it holds: deleted ones would stay in
    the cache and reach the model again. The cache is keyed by the window start, so moving
    the start to another value that selects the same messages ("id > start") discards it
    everywhere without changing what the window holds.
    """
    c, m = conversations.c, messages.c
    for conversation_id in sorted(set(conversation_ids)):
        start = connection.execute(
            select(c.window_start_id).where(c.id == conversation_id)
        ).scalar()
        if start is None:
            continue
        below = connection.execute(
            select(func.max(m.id)).where(m.conversation_id == conversation_id, m.id <= start)
        ).scalar()
        above = connection.execute(
            select(func.min(m.id)).where(m.conversation_id == conversation_id, m.id > start)
        ).scalar()
        if below is None:  # nothing at or before the start: any lower start is the same
            moved = -1 if start != -1 else 0
        elif below < start:
            moved = below
        elif above is None or above > start + 1:
            moved = start + 1
        else:
            continue  # no other start selects the same messages; caches expire by LRU
        connection.execute(
            update(conversations).where(c.id == conversation_id).values(window_start_id=moved)
        )


def _forgotten_conversation(connection: Connection, platform: str) -> int:
    """The id of the platform's conversation for turns of `/forget confirm`, made if new."""
    key = {"platform": platform, "workspace": "", "channel": "", "thread": FORGOTTEN_THREAD}
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(insert(conversations).values(**key).on_conflict_do_nothing())
    c = conversations.c
    return int(
        connection.execute(
            select(c.id).where(*(c[name] == value for name, value in key.items()))
        ).scalar_one()
    )


def _hold_ids(connection: Connection, deleted: Sequence[int]) -> None:
    """Keep a deleted conversation's id from being given to a new conversation.

    SQLite gives a new row the highest id + 1, so deleting the newest conversation hands its
    id to the next one, while processes may still cache the deleted one's window under that
    id (core/context.py `WindowCache`) and would put its messages into the new conversation,
    someone else's maybe. A reserved row keeps the highest deleted id taken. PostgreSQL's
    identity never goes back.
    """
    if connection.dialect.name != "sqlite" or not deleted:
        return
    c = conversations.c
    highest = max(deleted)
    if (connection.execute(select(func.max(c.id))).scalar() or 0) >= highest:
        return
    watermark = [c[name] == value for name, value in ID_WATERMARK.items()]
    moved = connection.execute(update(conversations).where(*watermark).values(id=highest)).rowcount
    if not moved:
        connection.execute(conversations.insert().values(id=highest, **ID_WATERMARK))


def _purge_batch(connection: Connection, cutoff: datetime, batch: int) -> Purged:
    m, a, t, u, f, r, c = (
        messages.c,
        attachments.c,
        turns.c,
        usage.c,
        moderation_flags.c,
        user_requests.c,
        conversations.c,
    )

    def old_ids(id_column: Any, *where: ColumnElement[bool]) -> list[int]:
        # SKIP LOCKED: processes purging at once take different rows (PostgreSQL).
        chosen = (
            select(id_column)
            .where(*where)
            .order_by(id_column)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        return [int(i) for i in connection.execute(chosen).scalars()]

    gone = connection.execute(
        select(m.id, m.conversation_id)
        .where(m.created_at < cutoff)
        .order_by(m.id)
        .limit(batch)
        .with_for_update(skip_locked=True)
    ).all()
    purged_messages = _delete_in(connection, m.id, [row.id for row in gone])
    # Only a window that held a purged message (one after its start) is cached with it.
    newest: dict[int, int] = {}
    for row in gone:
        newest[row.conversation_id] = max(newest.get(row.conversation_id, 0), row.id)
    windows = [
        conversation_id
        for chunk in _chunks(sorted(newest))
        for conversation_id, start in connection.execute(
            select(c.id, c.window_start_id).where(c.id.in_(chunk))
        )
        if newest[conversation_id] > start
    ]
    _invalidate_windows(connection, windows)
    purged = Purged(
        messages=purged_messages,
        attachments=_delete_in(connection, a.id, old_ids(a.id, a.created_at < cutoff)),
        turns=_delete_in(
            connection,
            t.id,
            old_ids(
                t.id,
                t.created_at < cutoff,
                t.state.in_((TurnState.DELIVERED, TurnState.UNDELIVERED)),
            ),
        ),
        usage=_delete_in(connection, u.id, old_ids(u.id, u.created_at < cutoff)),
        flags=_delete_in(connection, f.id, old_ids(f.id, f.created_at < cutoff)),
        requests=_delete_in(connection, r.id, old_ids(r.id, r.created_at < cutoff)),
    )
    idle = old_ids(
        c.id,
        c.updated_at < cutoff,
        c.thread != ID_WATERMARK["thread"],
        ~exists().where(m.conversation_id == c.id),
        ~exists().where(t.conversation_id == c.id),
        ~exists().where(a.conversation_id == c.id),
    )
    deleted = _delete_in(connection, c.id, idle)
    _hold_ids(connection, idle)
    return replace(purged, conversations=deleted)


def _platforms_of(connection: Connection, user_id: str) -> list[str]:
    c, m, t, a, u, f = (
        conversations.c,
        messages.c,
        turns.c,
        attachments.c,
        usage.c,
        moderation_flags.c,
    )
    found = (
        select(c.platform)
        .join(messages, m.conversation_id == c.id)
        .where(m.role == "user", m.author_id == user_id)
        .union(
            select(t.platform).where(t.user_id == user_id),
            select(a.platform).where(a.user_id == user_id),
            select(u.platform).where(u.user_id == user_id),
            select(f.platform).where(f.user_id == user_id),
        )
    )
    return sorted(connection.execute(found).scalars())


def _export_platform(
    connection: Connection,
    data: dict[str, Any],
    platform: str,
    user_id: str,
    attachment_data: bool,
) -> None:
    theirs = _their_part(connection, platform, user_id)
    c, m = conversations.c, messages.c
    shared_ids: dict[int, list[int]] = {}
    for conversation_id, message_id in theirs.shared_messages:
        shared_ids.setdefault(conversation_id, []).append(message_id)
    for conversation_id in sorted([*theirs.private, *theirs.shared]):
        row = connection.execute(select(conversations).where(c.id == conversation_id)).one()
        private = conversation_id in theirs.private
        statement = select(messages).where(m.conversation_id == conversation_id).order_by(m.id)
        if not private:
            statement = statement.where(m.id.in_(shared_ids.get(conversation_id, [])))
        data["conversations"].append(
            {
                "id": row.id,
                "platform": row.platform,
                "workspace": row.workspace,
                "channel": row.channel,
                "thread": row.thread,
                "shared": not private,
                # A shared conversation's summary holds other people's words too.
                "summary": row.summary if private else None,
                "created_at": _time(row.created_at),
                "updated_at": _time(row.updated_at),
                "messages": [
                    {
                        "id": message.id,
                        "role": message.role,
                        "author_id": message.author_id,
                        "author_name": message.author_name,
                        "content": message.content,
                        "tool_calls": message.tool_calls,
                        "tool_call_id": message.tool_call_id,
                        "created_at": _time(message.created_at),
                    }
                    for message in connection.execute(statement)
                ],
            }
        )
    a, t, u, f = attachments.c, turns.c, usage.c, moderation_flags.c
    for row in connection.execute(
        select(attachments).where(a.platform == platform, a.user_id == user_id).order_by(a.id)
    ):
        data["attachments"].append(
            {
                "id": row.id,
                "platform": platform,
                "conversation_id": row.conversation_id,
                "message_id": row.message_id,
                "kind": row.kind,
                "name": row.name,
                "mime": row.mime,
                "size": row.size,
                "data_base64": base64.b64encode(row.data).decode("ascii")
                if attachment_data and row.data is not None
                else None,
                "created_at": _time(row.created_at),
            }
        )
    for row in connection.execute(
        select(turns).where(t.platform == platform, t.user_id == user_id).order_by(t.id)
    ):
        data["turns"].append(
            {
                "id": row.id,
                "platform": platform,
                "conversation_id": row.conversation_id,
                "text": row.text,
                "state": row.state,
                "reply": row.reply,
                "created_at": _time(row.created_at),
            }
        )
    for row in connection.execute(
        select(usage).where(u.platform == platform, u.user_id == user_id).order_by(u.id)
    ):
        data["usage"].append(
            {
                "id": row.id,
                "platform": platform,
                "conversation_id": row.conversation_id,
                "model": row.model,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "estimated": bool(row.estimated),
                "cost_usd": row.cost_usd,
                "created_at": _time(row.created_at),
            }
        )
    for row in connection.execute(
        select(moderation_flags).where(f.platform == platform, f.user_id == user_id).order_by(f.id)
    ):
        data["moderation_flags"].append(
            {
                "id": row.id,
                "platform": platform,
                "conversation_id": row.conversation_id,
                "workspace": row.workspace,
                "channel": row.channel,
                "thread": row.thread,
                "direction": row.direction,
                "action": row.action,
                "categories": list(row.categories),
                "scores": dict(row.scores),
                "excerpt": row.excerpt,
                "created_at": _time(row.created_at),
            }
        )


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), BATCH):
        yield list(ids[start : start + BATCH])


def _delete_in(connection: Connection, column: Any, values: Sequence[int]) -> int:
    deleted = 0
    for chunk in _chunks(values):
        deleted += connection.execute(delete(column.table).where(column.in_(chunk))).rowcount
    return deleted


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else _aware(moment).isoformat()
