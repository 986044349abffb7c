"""The statements every message runs, built once with bind parameters.

Building a SQLAlchemy statement (coercing every value, making its bind parameters) costs more
than SQLite takes to run it: accepting a message went from 3.7 to ~1 ms of the store thread's
time when its statements were built once (bench/README.md). Values go in as parameters;
names are prefixed `p_` where they would clash with a column an UPDATE sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    Delete,
    Insert,
    Select,
    Update,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)

from core.storage.base import ChannelSettings, TurnState
from core.storage.tables import (
    channel_settings,
    conversations,
    turns,
    user_requests,
)
from core.storage.tables import (
    messages as message_rows,
)
from core.storage.tables import (
    usage as usage_rows,
)

CHANNEL_COLUMNS = tuple(channel_settings.c[f.name] for f in fields(ChannelSettings))
STORED_COLUMNS = (
    message_rows.c.id,
    message_rows.c.role,
    message_rows.c.content,
    message_rows.c.token_count,
    message_rows.c.author_name,
    message_rows.c.tool_calls,
    message_rows.c.tool_call_id,
    message_rows.c.images,
)
# A bound no message id reaches: "no upper bound" without a second statement.
NO_LIMIT_ID = 2**62


@dataclass(frozen=True)
class HotStatements:
    conversation_id: Insert  # platform, workspace, channel, thread -> the id (row locked)
    # conversation_id, p_owner -> a row when a turn there is unfinished (see build)
    unfinished_turn: Select[Any]
    insert_turn: Insert  # the turn's columns -> the id, or none for a known event
    set_refusal: Update  # p_turn_id, p_reply
    limit_counts: Select[Any]  # p_platform, p_user_id, minute_ago, midnight
    channel: Select[Any]  # platform, workspace, channel -> CHANNEL_COLUMNS
    # platform, user_id, created_at; on PostgreSQL also p_platform, p_user_id, minute_ago:
    # it prunes the user's old requests in the same statement.
    record_request: Insert
    prune_requests: Delete  # p_platform, p_user_id, minute_ago (SQLite)
    finish_delivery: Update  # p_turn_id, p_owner, p_state, p_at (executemany)
    record_posted: Update  # p_turn_id, p_owner, p_posted
    conversation_state: Insert  # platform, workspace, channel, thread -> the state columns
    leased_message: Select[Any]  # p_turn_id, p_owner -> the turn's message_id (row locked)
    insert_message: Insert  # the message's columns -> its id
    set_message: Update  # p_turn_id, p_message_id
    end_turn: Update  # p_turn_id, p_owner, p_reply: running -> replied, if still ours
    recent_messages: Select[Any]  # conversation_id, after_id, before_id, limit -> STORED_COLUMNS

    @classmethod
    def build(cls, insert: Callable[[Any], Any], postgres: bool) -> HotStatements:
        """`insert`: the dialect's insert (for ON CONFLICT)."""
        c, t, r, u = conversations.c, turns.c, user_requests.c, usage_rows.c
        key_columns = ("platform", "workspace", "channel", "thread")
        # INSERTs take their values as parameters named after the columns.
        conversation_upsert = insert(conversations).on_conflict_do_update(
            index_elements=list(key_columns), set_={"updated_at": func.now()}
        )
        m = message_rows.c
        insert_turn = (
            insert(turns)
            .on_conflict_do_nothing(index_elements=["platform", "event_id"])
            .returning(t.id)
        )
        mine = and_(r.platform == bindparam("p_platform"), r.user_id == bindparam("p_user_id"))
        recent = and_(mine, r.created_at > bindparam("minute_ago"))
        limit_counts = select(
            select(func.count()).where(recent).scalar_subquery(),
            select(func.min(r.created_at)).where(recent).scalar_subquery(),
            select(func.coalesce(func.sum(u.prompt_tokens + u.completion_tokens), 0))
            .where(
                u.platform == bindparam("p_platform"),
                u.user_id == bindparam("p_user_id"),
                u.created_at >= bindparam("midnight"),
            )
            .scalar_subquery(),
        )
        prune_requests = delete(user_requests).where(mine, r.created_at <= bindparam("minute_ago"))
        record_request = user_requests.insert()
        if postgres:  # one round trip: PostgreSQL runs a DELETE in a WITH
            record_request = record_request.add_cte(prune_requests.cte("pruned"))
        mine_turn = and_(t.id == bindparam("p_turn_id"), t.lease_owner == bindparam("p_owner"))
        return cls(
            conversation_id=conversation_upsert.returning(c.id),
            # A reply the accepting process itself is delivering does not hold the next turn
            # back: that conversation's worker there delivers it before it runs the next.
            unfinished_turn=select(t.id)
            .where(
                t.conversation_id == bindparam("conversation_id"),
                t.state.in_(TurnState.UNFINISHED),
                or_(
                    t.state != TurnState.REPLIED,
                    t.lease_owner.is_distinct_from(bindparam("p_owner")),
                ),
            )
            .limit(1),
            insert_turn=insert_turn,
            set_refusal=update(turns)
            .where(t.id == bindparam("p_turn_id"))
            .values(reply=bindparam("p_reply")),
            limit_counts=limit_counts,
            channel=select(*CHANNEL_COLUMNS).where(
                channel_settings.c.platform == bindparam("platform"),
                channel_settings.c.workspace == bindparam("workspace"),
                channel_settings.c.channel == bindparam("channel"),
            ),
            record_request=record_request,
            prune_requests=prune_requests,
            finish_delivery=update(turns)
            .where(
                or_(t.id == bindparam("p_turn_id"), t.merged_into == bindparam("p_turn_id")),
                t.lease_owner == bindparam("p_owner"),
            )
            .values(
                state=bindparam("p_state"),
                finished_at=bindparam("p_at"),
                lease_owner=None,
                lease_until=None,
            ),
            record_posted=update(turns)
            .where(mine_turn)
            .values(posted=bindparam("p_posted", type_=t.posted.type)),
            conversation_state=conversation_upsert.returning(
                c.id, c.persona, c.window_start_id, c.summary, c.summary_through_id
            ),
            leased_message=select(t.message_id).where(mine_turn).with_for_update(),
            insert_message=message_rows.insert().returning(m.id),
            set_message=update(turns)
            .where(t.id == bindparam("p_turn_id"))
            .values(message_id=bindparam("p_message_id")),
            end_turn=update(turns)
            .where(mine_turn, t.state == TurnState.RUNNING)
            .values(state=TurnState.REPLIED, reply=bindparam("p_reply")),
            recent_messages=select(*STORED_COLUMNS)
            .where(
                m.conversation_id == bindparam("conversation_id"),
                m.id > bindparam("after_id"),
                m.id < bindparam("before_id"),
            )
            .order_by(m.id.desc())
            .limit(bindparam("limit")),
        )
