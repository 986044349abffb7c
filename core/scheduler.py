"""The scheduler: which accepted message is answered when, by which process, and delivered.

Adapters accept messages through `Scheduler.accept` (one transaction) and hand over; from then
on the scheduler owns the turn. Per conversation, turns run strictly in arrival order, one at
a time, each delivered before the next starts; conversations run concurrently, at most
`concurrency` turns at once. A turn is held under a lease that one heartbeat statement per
process keeps alive, so no database connection is held while the model streams, and any
process takes over a turn whose lease expired (its process died): a turn that had not ended
is run again, a reply already stored is delivered again, editing the messages it had posted.
That a reply landed is stored with the process's next transaction (an accept, a claim, or the
poll's, within a second), not one of its own: a crash in between costs one repeated edit. When
another process has a turn of the same conversation waiting, it is stored at once and that
process woken (PostgreSQL's LISTEN/NOTIFY, "signals between processes" below).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from core.conversation import Engine
from core.events import Accepted, Inbound, Refused, ReplyEvent, shown_text
from core.observe import NO_RECORDER, Recorder, TurnIds, working_on
from core.storage.base import Delivery, LeaseLost, SessionStore, Turn, TurnState
from core.storage.retry import DatabaseUnavailable

log = logging.getLogger(__name__)

# A turn accepted here and not started within this many seconds is assumed taken by another
# process (for the pending gauge; the turn itself is safe in the database either way).
QUEUED_FOR_AT_MOST = 3600.0
# Signals (see `Scheduler._heard`): WAIT + a conversation id, from a process whose accepted
# turn waits behind another process's turn of that conversation; DUE, from a process that
# recorded such a delivery or released leases: look for due turns now.
WAIT = "wait:"
DUE = "due"
# A WAIT this soon after a delivery here may be about it (its record rides on this process's
# next transaction, up to a poll interval later): record it now and say DUE.
RECENTLY = 10.0


class DeliveryFailed(Exception):
    """The platform refused the reply for good (a deleted channel, a blocked bot)."""


class MessageGone(DeliveryFailed):
    """A message of the reply is gone (someone deleted it): edits to it cannot land, a new
    message can."""


class ReplyView(Protocol):
    """One turn's reply on its platform, built by the adapter from the turn's address.

    `edits_in_place`: delivering the reply again edits the messages showing it (harmless
    after a crash); False where it would post it a second time (an ephemeral answer), so
    that it landed is stored at once.
    """

    edits_in_place: bool

    def show(self, event: ReplyEvent) -> None:
        """Shows progress (Accepted: a placeholder or typing; text; tool status) in the
        background. Never blocks and never raises: the turn does not wait for the platform."""
        ...

    async def deliver(self, markdown: str) -> None:
        """Shows the final text for sure: transient failures (network errors, 5xx, rate
        limits) are retried until it lands; the scheduler bounds how long.

        Raises:
            DeliveryFailed: the platform refused it for good.
        """
        ...

    async def aclose(self) -> None:
        """Stops any background work."""
        ...


PostedCallback = Callable[[Sequence[str]], Awaitable[None]]
"""Called with the ids of the messages showing the reply whenever a new one is posted."""

Outlet = Callable[[Turn, PostedCallback], ReplyView]
"""A platform's factory of reply views: the turn's address and posted ids say where."""


class Scheduler:
    """`async with Scheduler(engine=..., store=...) as scheduler:` runs turns until exit.

    Register each platform's outlet (`add_outlet`) before entering: the scheduler only takes
    turns of platforms this process serves. On exit, running turns get `grace` seconds to
    finish; the rest are cancelled and their leases released, so another process (or the
    next start) takes them over at once.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        store: SessionStore,
        lease_seconds: float = 20.0,
        poll_seconds: float = 1.0,
        concurrency: int = 64,
        delivery_deadline: float = 600.0,
        keep_finished_seconds: float = 2 * 86400.0,
        grace_seconds: float = 30.0,
        merge_queued: bool = False,
        clock: Callable[[], float] = time.time,
        recorder: Recorder = NO_RECORDER,
    ) -> None:
        self.owner = f"{uuid.uuid4().hex[:16]}"
        self._engine = engine
        self._store = store
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._concurrency = concurrency
        self._deadline = delivery_deadline
        self._keep = keep_finished_seconds
        self._grace = grace_seconds
        self._merge = merge_queued  # for channels that did not choose (/merge)
        self._clock = clock
        self._outlets: dict[str, Outlet] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._workers: dict[int, asyncio.Task[None]] = {}  # conversation id -> its worker
        self._handoff: dict[int, Turn] = {}  # a leased turn for a conversation's worker
        self._waiting: set[int] = set()  # conversations with turns accepted here, pending
        # Across processes (signals, see `_heard`): conversations whose next turn another
        # process holds, and when this one last delivered a turn of each conversation.
        self._wanted: set[int] = set()
        self._delivered_at: dict[int, float] = {}
        self._wake = asyncio.Event()  # the poll looks at once
        self._signals: set[asyncio.Task[None]] = set()
        self._listening = contextlib.AsyncExitStack()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._done: dict[int, Delivery] = {}  # finished deliveries not stored yet, by turn
        self._last_prune = 0.0
        self._stopping = False
        self._recorder = recorder
        # Turns accepted here that have not started, by id: when (monotonic). Their count is
        # the pending gauge, read only when the metrics are read.
        self._queued: dict[int, float] = {}
        recorder.watch_pending(lambda: len(self._queued))

    @property
    def engine(self) -> Engine:
        return self._engine

    def add_outlet(self, platform: str, outlet: Outlet) -> None:
        self._outlets[platform] = outlet

    async def __aenter__(self) -> Scheduler:
        await self._listening.enter_async_context(self._store.listen(self._heard))
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="parley-heartbeat")
        self._poll_task = asyncio.create_task(self._poll_loop(), name="parley-poll")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Lets running turns finish within the grace period, then hands the rest over."""
        self._stopping = True
        await _cancel(self._poll_task)
        # The heartbeat keeps the running turns' leases through the grace: were one to expire,
        # another process would answer the turn again while this one still edits its reply,
        # and this one's last edit could overwrite the other's complete answer.
        workers = set(self._workers.values())
        if workers:
            _, late = await asyncio.wait(workers, timeout=self._grace)
            if late:
                log.warning("stopping: %d turns did not finish in %.0f s", len(late), self._grace)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await _cancel(self._heartbeat_task)
        self._poll_task = self._heartbeat_task = None
        try:
            await self._flush_done()
            released = await self._store.release_leases(owner=self.owner)
            if released:
                log.info("stopping: %d unfinished turns left for another process", released)
                self._send(DUE)  # the others take them now, not at their poll
        except Exception as exc:  # the leases then expire on their own
            log.warning("stopping: could not release leases: %s", exc)
        finally:
            await asyncio.gather(*self._signals, return_exceptions=True)
            await self._listening.aclose()

    # --- accepting ----------------------------------------------------------------------------

    async def accept(self, inbound: Inbound, address: dict[str, Any]) -> Turn | Refused | None:
        """Step 1 (see Engine.accept); then the turn is this scheduler's to answer.

        Raises:
            DatabaseUnavailable: nothing was stored; make the platform redeliver.
        """
        # While stopping, a message is stored unleased: the next process takes it at once.
        owner = None if self._stopping else self.owner
        done = self._take_done() if owner else []
        try:
            result = await self._engine.accept(
                inbound, address, owner=owner, lease_until=self._clock() + self._lease, done=done
            )
        except BaseException:
            self._put_back(done)
            raise
        if isinstance(result, Refused):
            self._put_back(done)  # refused at the door: nothing was written
        if isinstance(result, Turn):
            if not self._stopping:
                self._queued[result.id] = time.monotonic()
            if result.state == TurnState.RUNNING:
                self._start(result)
            elif not self._stopping:
                # An earlier turn of the conversation is unfinished; its worker (here) or
                # the poll (a turn of another process) takes this one when its time comes.
                conversation = result.conversation_id
                self._waiting.add(conversation)
                if conversation not in self._workers:
                    # No worker here: the earlier turn is another process's, or was this
                    # one's and its worker ended while this message was being stored (its
                    # last claim could not see it yet). A worker's claim, which carries the
                    # finished deliveries, takes it in the second case; in the first it
                    # finds nothing and the other process is told.
                    self._run_worker(conversation, None)
                    self._send(f"{WAIT}{conversation}")
        return result

    # --- signals between processes ------------------------------------------------------------
    # A turn waiting behind another process's turn would start at this process's next poll
    # after the other one's next transaction recorded the delivery: up to two poll intervals.
    # Signals cut that to a few milliseconds: the waiting process says WAIT, the holder records
    # its delivery as soon as it lands and says DUE, which wakes every poll. Signals are hints
    # (lost while a listening connection is down; none on SQLite): the poll stays the rule.

    def _heard(self, message: str) -> None:
        if message.startswith(WAIT):
            try:
                conversation = int(message.removeprefix(WAIT))
            except ValueError:
                return
            if conversation in self._workers:
                self._wanted.add(conversation)  # `_answer` hands over after its delivery
            delivered = self._delivered_at.get(conversation)
            if delivered is not None and time.monotonic() - delivered < RECENTLY:
                self._spawn(self._hand_over())  # delivered already: perhaps not recorded yet
        else:  # DUE, or "" after the listening connection (re)connected
            self._wake.set()

    async def _hand_over(self) -> None:
        await self._flush_done()
        await self._store.signal(DUE)

    def _send(self, message: str) -> None:
        self._spawn(self._store.signal(message))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # a hint lost: the poll does the same a little later
                log.info("signalling other processes failed: %s", exc)

        task = asyncio.create_task(run(), name="parley-signal")
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)

    # --- running ------------------------------------------------------------------------------

    def _start(self, turn: Turn) -> None:
        conversation = turn.conversation_id
        if conversation in self._workers:
            self._handoff[conversation] = turn
            return
        self._run_worker(conversation, turn)

    def _run_worker(self, conversation: int, turn: Turn | None) -> None:
        self._workers[conversation] = asyncio.create_task(
            self._worker(conversation, turn), name=f"parley-conversation-{conversation}"
        )

    async def _worker(self, conversation: int, turn: Turn | None) -> None:
        """Answers one conversation's turns in order while this process has some to answer."""
        try:
            while True:
                if turn is None:
                    turn = self._handoff.pop(conversation, None)
                if turn is None and conversation in self._waiting:
                    self._waiting.discard(conversation)
                    # Messages that queued up behind a turn: one by one, or merged into one.
                    claimed = await self._claim(
                        limit=1, conversation_id=conversation, merge=self._merge
                    )
                    if claimed:
                        [turn] = claimed
                        self._waiting.add(conversation)  # there may be more behind it
                    continue
                if turn is None:
                    return  # no await since the checks above: nothing can slip in between
                async with self._slots:
                    await self._process(turn)
                turn = None
        except Exception:
            log.exception("the worker of conversation %s failed", conversation)
            self._recorder.error(kind="worker")
        finally:
            del self._workers[conversation]
            self._wanted.discard(conversation)

    async def _process(self, turn: Turn) -> None:
        platform = turn.inbound.key.platform
        now = time.monotonic()
        for part in (*turn.merged, turn):
            accepted = self._queued.pop(part.id, None)
            if accepted is not None:  # accepted here (another process's turns: not known)
                self._recorder.queue_wait(platform=platform, seconds=now - accepted)
        with working_on(TurnIds(platform, turn.conversation_id, turn.id, self._recorder)):
            await self._answer(turn)

    async def _answer(self, turn: Turn) -> None:
        outlet = self._outlets.get(turn.inbound.key.platform)
        assert outlet is not None, "claimed a turn of a platform this process does not serve"

        async def posted(ids: Sequence[str]) -> None:
            await self._store.record_posted(turn_id=turn.id, owner=self.owner, posted=ids)

        view = outlet(turn, posted)
        try:
            if turn.state == TurnState.RUNNING:
                view.show(Accepted())
                last: ReplyEvent | None = None
                async for event in self._engine.run(turn, self.owner):
                    view.show(event)
                    last = event
                assert last is not None
                text = shown_text(last)
            else:  # the reply was stored before a crash: deliver it, do not answer again
                assert turn.reply is not None
                text = turn.reply
            delivered = await self._deliver(turn, view, text)
            done = Delivery(turn.id, delivered=delivered, at=self._clock())
            if view.edits_in_place:
                # Stored with this process's next transaction (a claim, an accept, the poll's).
                self._done[turn.id] = done
            else:
                await self._store.finish_deliveries(owner=self.owner, done=[done])
            conversation = turn.conversation_id
            self._delivered_at.pop(conversation, None)
            self._delivered_at[conversation] = time.monotonic()  # kept in time order
            if conversation in self._wanted:  # another process waits for this delivery
                self._wanted.discard(conversation)
                self._spawn(self._hand_over())
            await self._engine.after(turn)
        except LeaseLost:
            log.info("turn %s was taken over by another process", turn.id)
            self._recorder.error(kind="lease_lost")
            self._engine.forget(turn)
        except DatabaseUnavailable as exc:
            # Whatever was not stored is done again once the lease expires.
            log.warning("turn %s stopped: the database is unavailable (%s)", turn.id, exc)
            self._recorder.error(kind="database_unavailable")
            self._engine.forget(turn)
        finally:
            await view.aclose()

    async def _deliver(self, turn: Turn, view: ReplyView, text: str) -> bool:
        started = time.monotonic()
        outcome = "delivered"
        try:
            await asyncio.wait_for(view.deliver(text), timeout=self._deadline)
        except DeliveryFailed as exc:
            log.error("turn %s: the platform refused the reply: %s", turn.id, exc)
            outcome = "refused"
        except TimeoutError:
            log.error(
                "turn %s: the reply could not be delivered within %.0f s", turn.id, self._deadline
            )
            outcome = "timeout"
        self._recorder.delivery(
            platform=turn.inbound.key.platform,
            outcome=outcome,
            seconds=time.monotonic() - started,
        )
        return outcome == "delivered"

    # --- leases -------------------------------------------------------------------------------

    async def _claim(
        self, *, limit: int, conversation_id: int | None = None, merge: bool = False
    ) -> Sequence[Turn]:
        now = self._clock()
        done = self._take_done()
        try:
            return await self._store.claim_turns(
                owner=self.owner,
                now=now,
                lease_until=now + self._lease,
                limit=limit,
                platforms=list(self._outlets),
                conversation_id=conversation_id,
                exclude=[] if conversation_id is not None else list(self._workers),
                done=done,
                merge=merge,
            )
        except BaseException:
            self._put_back(done)
            raise

    async def _flush_done(self) -> None:
        done = self._take_done()
        try:
            await self._store.finish_deliveries(owner=self.owner, done=done)
        except BaseException:
            self._put_back(done)
            raise

    def _take_done(self) -> list[Delivery]:
        """The finished deliveries, for one transaction to store. Taken, not copied:
        transactions running at once each store different ones."""
        done = list(self._done.values())
        self._done.clear()
        return done

    def _put_back(self, done: Sequence[Delivery]) -> None:
        """Deliveries a transaction did not store, for the next one."""
        for delivery in done:
            self._done.setdefault(delivery.turn_id, delivery)

    async def _heartbeat(self) -> None:
        """One statement renews every lease this process holds, however many turns run."""
        while True:
            await asyncio.sleep(self._lease / 3)
            if not self._workers:
                continue
            try:
                await self._store.renew_leases(
                    owner=self.owner, lease_until=self._clock() + self._lease
                )
            except Exception as exc:
                log.warning("renewing leases failed: %s", exc)
                self._recorder.error(kind="lease_renewal")

    async def _poll_loop(self) -> None:
        """Takes over due turns: expired leases (a process died) and turns that waited for
        an earlier one of another process. At start, this is the recovery."""
        while True:
            try:
                free = self._concurrency - len(self._workers)
                if free > 0:
                    for turn in await self._claim(limit=min(free, 32)):
                        log.info("taking over turn %s (%s)", turn.id, turn.state)
                        # A first claim leases a pending turn; anything else was leased before.
                        if turn.state != TurnState.RUNNING or turn.attempts > 1:
                            self._recorder.lease_takeover()
                        self._start(turn)
                self._forget_queued()
                await self._flush_done()
                await self._prune()
            except Exception as exc:
                log.warning("looking for due turns failed: %s", exc)
                self._recorder.error(kind="poll")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()

    def _forget_queued(self) -> None:
        """Drops turns accepted here long ago that never started here: another process's
        poll took them (it may, once the turn before them ended), so this one never will.
        And deliveries too old for a WAIT signal to be about them."""
        _drop_older(self._queued, time.monotonic() - QUEUED_FOR_AT_MOST)
        _drop_older(self._delivered_at, time.monotonic() - RECENTLY)

    async def _prune(self) -> None:
        now = self._clock()
        if now - self._last_prune < min(self._keep, 3600.0):
            return
        self._last_prune = now
        pruned = await self._store.prune_turns(finished_before=now - self._keep)
        if pruned:
            log.info("pruned %d finished turns", pruned)


def _drop_older(moments: dict[int, float], than: float) -> None:
    """Drops the entries of a dict kept in time order whose moment is before `than`."""
    while moments:
        key, moment = next(iter(moments.items()))
        if moment >= than:
            return
        del moments[key]


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
