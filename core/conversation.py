"""The engine: one turn of a conversation, from an inbound message to reply events."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from core import wording
from core.attachments import AttachmentReader, Fetch, ReadAttachments, sees_images
from core.commands import CommandHandler, parse_command
from core.context import Window, WindowCache, build_window, context_size, counted, shorten
from core.errors import ModelError
from core.events import (
    TURN_ENDS,
    Accepted,
    CommandResult,
    ConversationKey,
    Delta,
    Failed,
    Final,
    Inbound,
    Refused,
    ReplyEvent,
    Retracted,
    ToolFinished,
    ToolStarted,
    Usage,
    shown_text,
)
from core.knowledge.passages import Hit, Retriever, knowledge_block
from core.llm import ModelClient, ModelRequest, TextChunk, ToolCallChunk, UsageChunk
from core.local_rules import scrub
from core.locks import KeyedLocks
from core.moderation import (
    Direction,
    Finding,
    ModerationChain,
    ModerationUnavailable,
    Verdict,
)
from core.observe import (
    NO_RECORDER,
    Recorder,
    TurnIds,
    first_chunk_timed,
    messages_log,
    outcome_of,
    working_on,
)
from core.personas import Persona, PersonaCatalogue, resolve_persona
from core.policy import AccessControl, RateLimiter
from core.pricing import PriceTable
from core.speakers import without_speaker
from core.storage.base import (
    ConversationState,
    Delivery,
    FlagRecord,
    LeaseLost,
    NewMessage,
    SessionStore,
    Turn,
    TurnState,
    UsageRecord,
)
from core.storage.retry import DatabaseUnavailable
from core.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    TokenCounter,
    counter_for_model,
    message_tokens,
)
from core.tools import RESULT_END, ToolCall, ToolContext, ToolRegistry, run_tool_calls

log = logging.getLogger(__name__)

# The smallest window worth sending: below it the persona or the reply reserve is too large
# for the model, and the server's own error says so better than an empty prompt would.
MIN_WINDOW_TOKENS = 256


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """The engine's knobs, taken from Settings by the bootstrap."""

    bot_name: str
    model: str
    reply_tokens: int
    context_tokens: int | None = None
    summaries: bool = False
    window_cache_size: int = 256
    tool_steps: int = 5
    buffer_output: bool = False  # hold replies until output moderation has passed them
    # handle()'s leases, renewed while it runs: a caller that died mid-answer (a terminal
    # closed, a server killed) leaves its turn to the conversation's next message this long
    # after its last renewal.
    local_lease: float = 30.0
    kb_passages: int = 4  # retrieved before each answer when knowledge bases are attached
    kb_chars: int = 6000  # at most this much of them in the prompt
    vision: str = "auto"  # PARLEY_VISION: send images to the model (auto: if it sees them)


# How much of a flagged text is kept for review (personal data scrubbed).
EXCERPT_CHARS = 500
# A turn taken this many times without ending crashes whoever runs it: it is given up on.
MAX_ATTEMPTS = 3
LOCAL_WAIT = 1.0  # between looks at an earlier turn another live process is answering
STOPPED = "[stopped]"  # the stored reply of a turn its caller stopped


class Engine:
    """Runs turns: accept (claim and store), run (policy, context, model, tools, moderation,
    storing the end), and follow-up work after delivery.

    Every part it talks to is a port (SessionStore, ModelClient, Moderator), and the policy
    parts (access, limits, moderation) are optional, so tests wire only what they exercise.
    """

    def __init__(
        self,
        *,
        store: SessionStore,
        model: ModelClient,
        personas: PersonaCatalogue,
        default_persona: Persona,
        options: EngineOptions,
        tools: ToolRegistry | None = None,
        access: AccessControl | None = None,
        limiter: RateLimiter | None = None,
        moderation: ModerationChain | None = None,
        prices: PriceTable | None = None,
        retriever: Retriever | None = None,
        attachments: AttachmentReader | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        recorder: Recorder = NO_RECORDER,
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._attachments = attachments
        self._fetchers: dict[str, Fetch] = {}
        self._retriever = retriever
        self._access = access
        self._limiter = limiter
        self._moderation = moderation
        self._prices = prices or PriceTable()
        self._tools = tools or ToolRegistry()
        self._schema_cache: dict[tuple[str, ...], tuple[list[dict[str, Any]], str]] = {}
        self._model = model
        self._personas = personas
        self._default_persona = default_persona
        self._options = options
        self._clock = clock
        self.owner = f"local-{uuid.uuid4().hex[:12]}"  # leases taken by handle()
        self._local_turns: KeyedLocks[ConversationKey] = KeyedLocks()
        self._follow_ups: dict[int, Callable[[], Awaitable[None]]] = {}
        self._windows = (
            WindowCache(options.window_cache_size) if options.window_cache_size else None
        )
        self.commands = CommandHandler(
            store=store,
            personas=personas,
            default_persona=default_persona,
            clock=clock,
            access=access,
            tools=self._tools,
            limits=limiter.limits if limiter is not None else None,
        )

    @property
    def personas(self) -> PersonaCatalogue:
        return self._personas

    def add_fetcher(self, platform: str, fetch: Fetch) -> None:
        """How `platform`'s adapter downloads attachments (through its SDK)."""
        self._fetchers[platform] = fetch

    async def accept(
        self,
        inbound: Inbound,
        address: dict[str, Any],
        *,
        owner: str | None = None,
        lease_until: float = 0.0,
        done: Sequence[Delivery] = (),
    ) -> Turn | Refused | None:
        """Step 1 of a message: check access, then claim the event, check the rate limit and
        budget, and store the message.

        One transaction; once it returns a Turn the message is durable and the adapter may
        acknowledge the platform. None means a redelivery (nothing to do), Refused a user the
        access lists keep out (nothing is stored; show them `text`). A message over a limit
        is a Turn too, whose `reply` is the refusal: it is delivered in its place in order.
        `done`: finished deliveries of `owner` to store in the same transaction.

        Raises:
            DatabaseUnavailable: the database stayed unreachable; let the platform redeliver.
        """
        try:
            allowed = self._access is None or await self._access.allows(inbound)
        except DatabaseUnavailable:
            raise  # not a decision about the user: let the platform redeliver
        except Exception:
            log.exception("checking access for %s failed", inbound.key)
            return Refused(text=wording.UNEXPECTED_FAILURE, reason="internal")
        if not allowed:
            log.info(
                "refused %s/%s: not on the access lists", inbound.key.platform, inbound.user_id
            )
            return Refused(text=wording.ACCESS_DENIED, reason="access")
        admission = None
        if self._limiter is not None and parse_command(inbound.text) is None:
            admission = self._limiter.admission(self._clock())  # commands cost no model call
        turn = await self._store.accept(
            inbound=inbound,
            address=address,
            owner=owner,
            lease_until=lease_until,
            admission=admission,
            done=done,
        )
        if turn is None:
            log.info(
                "event %s/%s already accepted; not answering again",
                inbound.key.platform,
                inbound.event_id,
            )
        return turn

    async def run(self, turn: Turn, owner: str) -> AsyncIterator[ReplyEvent]:
        """Step 2: answer a turn `owner` holds the lease of, ending it in the store.

        Yields Delta, ToolStarted and ToolFinished while the model works, then exactly one
        of Final, CommandResult, Refused, Retracted or Failed, whose text is stored as the
        turn's reply (state REPLIED) before it is yielded. Nothing here waits for a platform.
        Every model call made is recorded in usage, also when the turn fails.

        Raises:
            LeaseLost: another process took the turn over; it answers instead.
            DatabaseUnavailable: the end could not be stored; the turn is run again later.
        """
        if messages_log.isEnabledFor(logging.INFO):
            messages_log.info(
                "turn %s: %s wrote: %s", turn.id, turn.inbound.user_name, turn.inbound.text
            )
        started = time.perf_counter()
        last: ReplyEvent | None = None
        async for event in self._run(turn, owner):
            last = event
            yield event
        outcome = outcome_of(last)
        if outcome is None:
            return  # the caller stopped listening: the turn did not end here
        assert last is not None
        platform = turn.inbound.key.platform
        seconds = time.perf_counter() - started
        self._recorder.turn_finished(platform=platform, outcome=outcome, seconds=seconds)
        reason = getattr(last, "reason", "")
        if isinstance(last, Failed) or reason == "moderation_unavailable":
            self._recorder.error(kind=reason)
        if messages_log.isEnabledFor(logging.INFO):
            messages_log.info("turn %s: replied (%s): %s", turn.id, outcome, shown_text(last))

    async def _run(self, turn: Turn, owner: str) -> AsyncIterator[ReplyEvent]:
        inbound = turn.inbound
        progress = _Progress()
        try:
            if turn.attempts > MAX_ATTEMPTS:
                # The turn was taken this often and never ended: it crashes whoever runs it.
                log.error("turn %s failed %d times; giving up", turn.id, turn.attempts - 1)
                failed = Failed(text=wording.UNEXPECTED_FAILURE, reason="crashed")
                await self._store.finish_turn(turn=turn, owner=owner, reply=failed.text)
                yield failed
                return
            if turn.reply is not None:  # refused at the door (see accept)
                refused = Refused(text=turn.reply, reason="limit")
                await self._store.finish_turn(turn=turn, owner=owner, reply=refused.text)
                yield refused
                return
            command = parse_command(inbound.text)
            if command is not None:
                name, argument = command
                text = await self.commands.run(inbound, name, argument)
                await self._store.finish_turn(turn=turn, owner=owner, reply=text)
                yield CommandResult(text=text, command=name)
                return
            async for event in self._turn(turn, owner, progress):
                yield event
        except (LeaseLost, DatabaseUnavailable):
            raise
        except Exception:
            # The one place a bug in a turn is caught: log it, tell the user briefly.
            log.exception("turn failed for %s", inbound.key)
            failed = Failed(text=wording.UNEXPECTED_FAILURE, reason="internal")
            await self._store.finish_turn(
                turn=turn,
                owner=owner,
                reply=shown_text(failed),
                messages=[m for m in progress.produced if m.tool_calls or m.tool_call_id],
                usage=self._records(inbound, progress.usages),
            )
            yield failed

    async def handle(
        self, inbound: Inbound, address: dict[str, Any] | None = None
    ) -> AsyncIterator[ReplyEvent]:
        """Accept and answer one message here and now, for the terminal and tests.

        Yields nothing for a redelivered event, else Accepted and then `run`'s events. Calls
        for one conversation take turns in this process, and a turn a dead process left
        unfinished is answered first (see `_own_turn`); chat platforms go through the
        Scheduler instead.
        """
        async with self._local_turns.hold(inbound.key):
            accepted = await self.accept(
                inbound,
                address or {},
                owner=self.owner,
                lease_until=time.time() + self._options.local_lease,
            )
            waited = time.monotonic()
            if accepted is None:
                return
            if isinstance(accepted, Refused):
                yield accepted
                return
            yield Accepted()
            heartbeat = asyncio.create_task(self._renew_local_leases())
            try:
                turn = await self._own_turn(accepted)
                platform = inbound.key.platform
                self._recorder.queue_wait(platform=platform, seconds=time.monotonic() - waited)
                ids = TurnIds(platform, turn.conversation_id, turn.id, self._recorder)
                try:
                    with working_on(ids):
                        async for event in self.run(turn, self.owner):
                            if isinstance(event, TURN_ENDS):
                                # Before it is yielded: a caller may stop reading at the last
                                # event, and the conversation's next turn waits for this.
                                await self._delivered(turn)
                            yield event
                except asyncio.CancelledError:
                    # The caller stopped it (Ctrl-C in the terminal): end it as stopped, so
                    # the conversation's next message does not wait for its lease.
                    await asyncio.shield(self._stopped(turn))
                    raise
            finally:
                heartbeat.cancel()
        await self.after(turn)

    async def _own_turn(self, accepted: Turn) -> Turn:
        """The accepted turn, leased to this engine once every earlier one of its
        conversation has been answered. An earlier one left unfinished by a process that
        died (a terminal closed mid-answer) is finished first, once its lease expires: its
        question is answered and stored, in order, though nobody is shown it any more."""
        turn = accepted
        while turn.state != TurnState.RUNNING:
            now = time.time()
            claimed = await self._store.claim_turns(
                owner=self.owner,
                now=now,
                lease_until=now + self._options.local_lease,
                limit=1,
                platforms=[turn.inbound.key.platform],
                conversation_id=turn.conversation_id,
            )
            if not claimed:  # another live process holds the earlier one: wait for it
                await asyncio.sleep(LOCAL_WAIT)
                continue
            [first] = claimed
            if first.id == turn.id:
                return first
            log.info("finishing turn %s, left unfinished by a process that stopped", first.id)
            if first.state == TurnState.RUNNING:
                async for _ in self.run(first, self.owner):
                    pass
            await self._delivered(first)
            self.forget(first)
        return turn

    async def _stopped(self, turn: Turn) -> None:
        with contextlib.suppress(LeaseLost):  # it had ended already (stopped while shown)
            await self._store.finish_turn(turn=turn, owner=self.owner, reply=STOPPED)
        await self._delivered(turn)
        self.forget(turn)

    async def _delivered(self, turn: Turn) -> None:
        await self._store.finish_deliveries(
            owner=self.owner, done=[Delivery(turn.id, delivered=True, at=time.time())]
        )

    async def _renew_local_leases(self) -> None:
        while True:
            await asyncio.sleep(self._options.local_lease / 3)
            try:
                await self._store.renew_leases(
                    owner=self.owner, lease_until=time.time() + self._options.local_lease
                )
            except Exception as exc:  # the next renewal tries again; the lease has slack
                log.warning("renewing a local lease failed: %s", exc)

    async def after(self, turn: Turn) -> None:
        """Step 3: follow-up work of a delivered turn (the summary), outside the turn.

        Never fails and never changes what the user was shown: errors are logged.
        """
        follow_up = self._follow_ups.pop(turn.id, None)
        if follow_up is None:
            return
        try:
            await follow_up()
        except Exception:
            log.exception("follow-up work for turn %s failed", turn.id)

    def access_rules_changed(self) -> None:
        """Read the stored access rules again at the next message (an admin changed them
        here; other processes see it within their cache's lifetime)."""
        if self._access is not None:
            self._access.forget_cache()

    def forget(self, turn: Turn) -> None:
        """Drops the follow-up work of a turn that will not be delivered here."""
        self._follow_ups.pop(turn.id, None)

    async def _turn(self, turn: Turn, owner: str, progress: _Progress) -> AsyncIterator[ReplyEvent]:
        inbound = turn.inbound

        async def end(event: ReplyEvent, **stored: Any) -> ReplyEvent:
            await self._store.finish_turn(turn=turn, owner=owner, reply=shown_text(event), **stored)
            return event

        # Messages merged into this turn (queued while the one before ran) come first.
        user_messages: list[NewMessage] = []
        input_flags: list[FlagRecord] = []
        parts = (*turn.merged, turn)
        read = [ReadAttachments() for _ in parts]
        if any(part.inbound.attachments for part in parts):
            read = await self._read_attachments(parts)
        notes = [note for r in read for note in r.notes]
        usable = (
            p.inbound.text.strip() or r.texts or r.images for p, r in zip(parts, read, strict=True)
        )
        if notes and not any(usable):
            # Nothing the model could use (a photo for a model without vision, a file too
            # large): say why, and store nothing.
            yield await end(Refused(text=" ".join(notes), reason="attachments"))
            return
        for part, attachments in zip(parts, read, strict=True):
            text = "\n\n".join(t for t in (part.inbound.text, *attachments.texts) if t.strip())
            if self._moderation is not None and text:
                try:
                    verdict = await self._moderation.check(text, direction=Direction.INPUT)
                except ModerationUnavailable as exc:
                    log.warning("input moderation unavailable for %s: %s", inbound.key, exc)
                    flag = self._flag(part.inbound, Direction.INPUT, "unchecked", text)
                    refused = Refused(
                        text=wording.MODERATION_UNAVAILABLE, reason="moderation_unavailable"
                    )
                    yield await end(refused, flags=[flag])
                    return
                if verdict.findings:
                    input_flags.append(self._verdict_flag(part.inbound, Direction.INPUT, verdict))
                if verdict.blocked:
                    # Not stored as a message: it would reach the model on the next turn.
                    # Merged messages are answered together, so they are refused together.
                    refused = Refused(text=wording.INPUT_BLOCKED, reason="moderation")
                    yield await end(refused, flags=input_flags[-1:])
                    return
                text = verdict.text  # personal data redacted: that is what is stored and sent
            user_messages.append(
                NewMessage(
                    role="user",
                    content=text,
                    token_count=0,
                    author_id=part.inbound.user_id,
                    author_name=part.inbound.user_name,
                    attachments=attachments.kept,
                )
            )

        def count_tokens(state: ConversationState, message: NewMessage) -> int:
            # The conversation's persona picks the model, and so the tokenizer: counted once,
            # in the transaction that stores the message.
            counter = counter_for_model(self._model_for(state))
            images = sum(kept.tokens for kept in message.attachments if kept.data is not None)
            return message_tokens(counter, message.content, message.author_name) + images

        *merged, message = user_messages
        state, _ = await self._store.begin_turn(
            turn=turn,
            owner=owner,
            message=message,
            count_tokens=count_tokens,
            flags=input_flags,
            merged=merged,
        )
        persona = self._persona_for(state)
        model = self._model_for(state)
        counter = counter_for_model(model)
        reply_tokens = persona.max_reply_tokens or self._options.reply_tokens
        allowed = self._allowed_tools(persona, state)
        schemas, schemas_text = self._tool_schemas(allowed)
        system = self._system_prompt(persona, inbound, state)
        context_tokens = context_size(model, self._options.context_tokens)
        # Passages take at most a quarter of the context (a character is at least a token's
        # worth of bound), so the conversation keeps its room on small models.
        room = min(self._options.kb_chars, context_tokens // 4)
        question = "\n".join(m.content for m in user_messages)
        knowledge = await self._knowledge(persona, state, question, room)
        if knowledge:
            system += "\n\n" + knowledge

        def fixed_costs(exact: bool) -> tuple[int, int]:
            """Tokens the prompt may use (the system prompt, the window and any tool
            exchange), and the system prompt's: bounds, or exact counts."""
            count = counter.count if exact else counter.bound
            tool_tokens = count(schemas_text) if schemas else 0
            limit = context_tokens - reply_tokens - tool_tokens - REPLY_PRIMING
            return limit, message_tokens(counter, system, exact=exact)

        def window_budget(exact: bool) -> int:
            limit, system_tokens = fixed_costs(exact)
            return max(limit - system_tokens, MIN_WINDOW_TOKENS)

        window = await build_window(
            self._store,
            conversation_id=state.id,
            after_id=state.window_start_id,
            budget=window_budget(exact=False),
            counter=counter,
            cache=self._windows,
            exact_budget=lambda: window_budget(exact=True),
        )
        prompt_limit, system_tokens = fixed_costs(exact=window.exact)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            *to_openai_messages(window, await self._images(window, model)),
        ]
        speakers = {self._options.bot_name, inbound.user_name}
        speakers.update(m.author_name for m in window.messages if m.author_name)
        context = ToolContext(
            conversation_id=state.id,
            user_id=inbound.user_id,
            user_name=inbound.user_name,
            platform=inbound.key.platform,
            store=self._store,
            now=self._clock(),
            knowledge=self._knowledge_search(persona, state),
        )
        produced = progress.produced  # tool calls, their results, then the reply
        usages = progress.usages
        prompt_tokens = system_tokens + window.tokens
        # What the user has seen (or, when buffering, would have), across steps: first what
        # could not be used of their attachments.
        shown = "\n".join(f"_{note}_" for note in notes)
        buffered = self._moderation is not None and self._buffers(persona, state)
        if shown and not buffered:
            yield Delta(shown)
        steps = self._options.tool_steps
        for step in range(steps + 1):
            offered = schemas if step < steps else []
            if schemas and not offered:
                messages.append({"role": "system", "content": wording.TOOL_STEPS_USED})
            request = ModelRequest(
                model=model,
                messages=list(messages),
                max_tokens=reply_tokens,
                temperature=persona.temperature,
                tools=offered,
            )
            text_parts: list[str] = []
            calls = _ToolCalls()
            reported: UsageChunk | None = None
            try:
                stream = first_chunk_timed(self._model.stream(request), self._recorder, model)
                async for chunk in without_speaker(stream, speakers):
                    if isinstance(chunk, TextChunk):
                        piece = chunk.text
                        if not text_parts and shown:
                            piece = "\n\n" + piece  # a new step's text starts a new paragraph
                        text_parts.append(chunk.text)
                        shown += piece
                        if not buffered:
                            yield Delta(piece)
                    elif isinstance(chunk, ToolCallChunk):
                        calls.add(chunk)
                    else:
                        reported = chunk
            except ModelError as exc:
                log.warning("model call failed for %s: %s", inbound.key, exc)
                if text_parts:  # tokens were spent on the cut-off text: count them
                    cut = "".join(text_parts)
                    usages.append(self._usage(reported, model, prompt_tokens, cut, counter))
                failed = Failed(
                    text=wording.MODEL_FAILURE[exc.kind],
                    reason=exc.kind.value,
                    partial="" if buffered else shown,
                )
                yield await end(failed, messages=produced, usage=self._records(inbound, usages))
                return
            text = "".join(text_parts)
            usages.append(self._usage(reported, model, prompt_tokens, text, counter))
            assembled = calls.assembled() if offered else []
            if not assembled:
                break
            tool_calls = calls.as_openai()
            step_messages = [
                NewMessage(
                    role="assistant",
                    content=text,  # "" rather than null: llama.cpp's server rejects null
                    token_count=message_tokens(counter, text)
                    + counter.bound(json.dumps(tool_calls)),
                    author_name=self._options.bot_name,
                    tool_calls=tool_calls,
                )
            ]
            messages.append({"role": "assistant", "content": text, "tool_calls": tool_calls})
            for call in assembled:
                yield ToolStarted(name=call.name, call_id=call.id)
            outcomes = await run_tool_calls(assembled, self._tools, set(allowed), context)
            room = prompt_limit - prompt_tokens - step_messages[0].token_count

            def exact_room() -> int:
                limit, _ = fixed_costs(exact=True)
                return limit - sum(sent_tokens(counter, m) for m in messages)

            results = fit_results([o.content for o in outcomes], room, counter, exact_room)
            for call, outcome, content in zip(assembled, outcomes, results, strict=True):
                yield ToolFinished(name=call.name, call_id=call.id, ok=outcome.ok)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
                step_messages.append(
                    NewMessage(
                        role="tool",
                        content=content,
                        token_count=message_tokens(counter, content),
                        tool_call_id=call.id,
                    )
                )
            produced.extend(step_messages)
            prompt_tokens += sum(m.token_count for m in step_messages)
        records = self._records(inbound, usages)
        if not text.strip():
            failed = Failed(text=wording.EMPTY_REPLY, reason="empty", partial=shown)
            yield await end(failed, messages=produced, usage=records)
            return

        produced.append(
            NewMessage(
                role="assistant",
                content=text,
                token_count=message_tokens(counter, text),
                author_name=self._options.bot_name,
            )
        )
        output_flags: list[FlagRecord] = []
        if self._moderation is not None:
            try:
                produced, output_flags = await self._moderate_output(inbound, produced, counter)
            except ModerationUnavailable as exc:
                log.warning("output moderation unavailable for %s: %s", inbound.key, exc)
                flag = self._flag(inbound, Direction.OUTPUT, "unchecked", shown)
                retracted = Retracted(
                    text=wording.OUTPUT_UNCHECKED, reason="moderation_unavailable"
                )
                yield await end(retracted, usage=records, flags=[flag])
                return
            if any(flag.action == "block" for flag in output_flags):
                # Nothing of the reply is stored: it must not reach the model in later turns.
                retracted = Retracted(text=wording.OUTPUT_RETRACTED, reason="moderation")
                yield await end(retracted, usage=records, flags=output_flags)
                return
            if output_flags:
                shown = "\n\n".join(
                    m.content for m in produced if m.role == "assistant" and m.content
                )
        if self._options.summaries and window.dropped and window.oldest_id is not None:
            # Run after delivery, outside the turn: a summary can never change the answer.
            self._follow_ups[turn.id] = partial(
                self._summarize, inbound, state, window, model, counter
            )
        final = Final(text=shown, usage=total_usage(usages))
        yield await end(final, messages=produced, usage=records, flags=output_flags)

    async def _read_attachments(self, parts: Sequence[Turn]) -> list[ReadAttachments]:
        """Each part's attachments downloaded and read; images only for a model that sees."""
        if self._attachments is None:
            unread = ReadAttachments(notes=[wording.ATTACHMENTS_OFF])
            return [unread if part.inbound.attachments else ReadAttachments() for part in parts]
        key = parts[-1].inbound.key
        # The conversation's persona picks the model: one more read, for attachments only.
        model = self._model_for(await self._store.conversation(key=key))
        vision = sees_images(model, self._options.vision)
        fetch = self._fetchers.get(key.platform)
        return [
            await self._attachments.read(part.inbound.attachments, fetch, vision=vision)
            for part in parts
        ]

    async def _images(self, window: Window, model: str) -> dict[int, str]:
        """The window's stored images as data URLs, when the model sees images."""
        ids = [
            image["id"]
            for m in window.messages
            for image in m.images or ()
            if not image.get("left_out")  # the window had no room for it
        ]
        if not ids or not sees_images(model, self._options.vision):
            return {}
        found = await self._store.images(ids=ids)
        return {
            image_id: f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            for image_id, (mime, data) in found.items()
        }

    async def _moderate_output(
        self, inbound: Inbound, produced: list[NewMessage], counter: TokenCounter
    ) -> tuple[list[NewMessage], list[FlagRecord]]:
        """Each text the model wrote this turn, checked (and redacted) before it is final.

        Raises ModerationUnavailable when a moderator cannot tell and the policy fails closed.
        """
        assert self._moderation is not None
        checked: list[NewMessage] = []
        flags: list[FlagRecord] = []
        for message in produced:
            if message.role != "assistant" or not message.content.strip():
                checked.append(message)
                continue
            verdict = await self._moderation.check(message.content, direction=Direction.OUTPUT)
            if verdict.findings:
                flags.append(self._verdict_flag(inbound, Direction.OUTPUT, verdict))
            if verdict.text != message.content:
                tokens = message.token_count - message_tokens(counter, message.content)
                message = replace(
                    message,
                    content=verdict.text,
                    token_count=tokens + message_tokens(counter, verdict.text),
                )
            checked.append(message)
        return checked, flags

    def _verdict_flag(self, inbound: Inbound, direction: Direction, verdict: Verdict) -> FlagRecord:
        assert verdict.action is not None
        return self._flag(inbound, direction, verdict.action.value, verdict.text, verdict.findings)

    def _flag(
        self,
        inbound: Inbound,
        direction: Direction,
        action: str,
        text: str,
        findings: Sequence[Finding] = (),
    ) -> FlagRecord:
        self._recorder.moderation(direction=direction.value, action=action)
        names = [f"{f.source}/{f.category}" for f in findings]
        return FlagRecord(
            key=inbound.key,
            user_id=inbound.user_id,
            direction=direction.value,
            action=action,
            categories=names,
            scores={
                name: f.score
                for name, f in zip(names, findings, strict=True)
                if f.score is not None
            },
            excerpt=scrub(text)[:EXCERPT_CHARS],
            at=self._clock(),
        )

    def _buffers(self, persona: Persona, state: ConversationState) -> bool:
        """Hold the reply until it is checked: the channel's choice, else the persona's."""
        for choice in (state.channel_buffer_output, persona.buffer_output):
            if choice is not None:
                return choice
        return self._options.buffer_output

    def _usage_record(self, inbound: Inbound, usage: Usage) -> UsageRecord:
        record = usage_record(inbound, usage, self._prices, self._clock())
        self._recorder.usage(
            model=record.model,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            cost_usd=record.cost_usd,
        )
        return record

    def _records(self, inbound: Inbound, usages: Sequence[Usage]) -> list[UsageRecord]:
        return [self._usage_record(inbound, usage) for usage in usages]

    def _tool_schemas(self, allowed: list[str]) -> tuple[list[dict[str, Any]], str]:
        """The tools' definitions, and as JSON (what they cost in the prompt is its tokens),
        made once per set."""
        key = tuple(allowed)
        if key not in self._schema_cache:
            schemas = [tool.schema() for tool in self._tools.select(allowed)]
            self._schema_cache[key] = (schemas, json.dumps(schemas))
        return self._schema_cache[key]

    async def _knowledge(
        self, persona: Persona, state: ConversationState, question: str, room: int
    ) -> str:
        """Passages of the conversation's knowledge bases for the question, as a block of at
        most `room` characters for the system prompt; "" when none is attached or nothing
        fits. A failing search is logged and the turn goes on without it."""
        search = self._knowledge_search(persona, state)
        if search is None or not self._options.kb_passages:
            return ""
        try:
            hits = await search(question, self._options.kb_passages)
        except Exception as exc:
            log.warning("knowledge search failed: %s", exc)
            return ""
        return knowledge_block(hits, room)

    def _knowledge_search(
        self, persona: Persona, state: ConversationState
    ) -> Callable[[str, int], Awaitable[list[Hit]]] | None:
        """Search in the conversation's knowledge bases: its channel's, else its persona's."""
        kbs = state.channel_knowledge if state.channel_knowledge is not None else persona.knowledge
        if not kbs or self._retriever is None:
            return None
        retriever = self._retriever
        return lambda query, limit: retriever.search(kbs, query, limit)

    def _allowed_tools(self, persona: Persona, state: ConversationState) -> list[str]:
        """The persona's tools, narrowed by the channel's list when it has one; none when
        no round of tool calls is allowed."""
        if self._options.tool_steps == 0:
            return []
        if state.channel_tools is None:
            return list(persona.tools)
        return [name for name in persona.tools if name in state.channel_tools]

    def _persona_for(self, state: ConversationState) -> Persona:
        return resolve_persona(
            self._personas, self._default_persona, state.persona, state.channel_persona
        )

    def _model_for(self, state: ConversationState) -> str:
        return self._persona_for(state).model or self._options.model

    def _system_prompt(self, persona: Persona, inbound: Inbound, state: ConversationState) -> str:
        prompt = persona.render_system_prompt(
            bot_name=self._options.bot_name,
            platform=inbound.key.platform,
            user_name=inbound.user_name,
            today=self._clock().date(),
        ).strip()
        if state.summary and state.summary_through_id >= state.window_start_id:
            prompt += f"\n\n{wording.SUMMARY_PREFIX}\n{state.summary}"
        return prompt

    @staticmethod
    def _usage(
        reported: UsageChunk | None,
        model: str,
        prompt_estimate: int,
        text: str,
        counter: TokenCounter,
    ) -> Usage:
        if reported is not None:
            return Usage(reported.prompt_tokens, reported.completion_tokens, reported.model)
        # Some servers do not report usage when streaming; our counts are the next best thing.
        return Usage(prompt_estimate + REPLY_PRIMING, counter.count(text), model, estimated=True)

    async def _summarize(
        self,
        inbound: Inbound,
        state: ConversationState,
        window: Window,
        model: str,
        counter: TokenCounter,
    ) -> None:
        """Fold the messages that fell out of the window into the conversation's summary.

        Only messages not yet summarized are read, and at most what fits half the context, so
        the cost is bounded however long the history is.
        """
        assert window.oldest_id is not None
        limit = context_size(model, self._options.context_tokens) // 2
        after = max(state.summary_through_id, state.window_start_id)
        dropped = await self._store.recent_messages(
            conversation_id=state.id, after_id=after, before_id=window.oldest_id, limit=500
        )
        chosen, used = [], counter.count(state.summary)
        for message in dropped:  # newest first
            message = counted(message, counter)  # the window did not fit: counts are exact
            if used + message.token_count > limit:
                break
            chosen.append(message)
            used += message.token_count
        if not chosen:
            return
        transcript = "\n".join(
            f"{m.author_name or m.role}: {m.content}" for m in reversed(chosen) if m.content
        )
        request = ModelRequest(
            model=model,
            messages=[
                {"role": "system", "content": SUMMARIZER_PROMPT},
                {
                    "role": "user",
                    "content": f"Summary so far:\n{state.summary or '(none)'}\n\n"
                    f"New messages:\n{transcript}",
                },
            ],
            max_tokens=512,
            temperature=0.2,
        )
        parts: list[str] = []
        reported: UsageChunk | None = None
        try:
            async for chunk in self._model.stream(request):
                if isinstance(chunk, TextChunk):
                    parts.append(chunk.text)
                elif isinstance(chunk, UsageChunk):
                    reported = chunk
        except ModelError as exc:
            log.warning("summary for conversation %s failed: %s", state.id, exc)
            return
        summary = "".join(parts).strip()
        if not summary:
            return
        await self._store.save_summary(
            conversation_id=state.id, summary=summary, through_id=chosen[0].id
        )
        usage = self._usage(reported, model, used, summary, counter)
        await self._store.record_usage(
            conversation_id=state.id, usage=self._usage_record(inbound, usage)
        )


SUMMARIZER_PROMPT = (
    "You maintain the running summary of a chat. Merge the new messages into the summary so "
    "far. Keep names, decisions, facts, open questions and commitments; drop small talk. "
    "Write at most 200 words of plain prose."
)


@dataclass
class _Progress:
    """What a turn has done so far, so that a failure at any point still stores it."""

    produced: list[NewMessage] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)


class _ToolCalls:
    """Assembles the tool calls of one model reply from streamed fragments (or whole ones)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}
        self._assembled: list[ToolCall] | None = None

    def add(self, chunk: ToolCallChunk) -> None:
        call = self._calls.setdefault(chunk.index, {"id": "", "name": "", "arguments": []})
        call["id"] = chunk.id or call["id"]
        call["name"] = chunk.name or call["name"]
        call["arguments"].append(chunk.arguments)

    def assembled(self) -> list[ToolCall]:
        if self._assembled is None:
            self._assembled = [
                ToolCall(
                    # Some local servers send no id; the result must still point at its call.
                    id=call["id"] or f"call_{uuid.uuid4().hex[:16]}",
                    name=call["name"],
                    arguments="".join(call["arguments"]),
                )
                for _, call in sorted(self._calls.items())
            ]
        return self._assembled

    def as_openai(self) -> list[dict[str, Any]]:
        return [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in self.assembled()
        ]


def fit_results(
    contents: list[str], room: int, counter: TokenCounter, exact_room: Callable[[], int]
) -> list[str]:
    """Tool results shortened, each to an equal share, when together they overflow the context.

    `room` is counted in bounds; when the results do not fit by bounds, they and the room
    (`exact_room()`) are counted exactly. The end of a result (its closing tag and the notice
    that it is data) is always kept.
    """
    if sum(message_tokens(counter, c) for c in contents) <= room:
        return contents
    room = exact_room()
    if sum(message_tokens(counter, c, exact=True) for c in contents) <= room:
        return contents
    share = max(room // len(contents) - MESSAGE_OVERHEAD, 0)
    return [
        c if counter.count(c) <= share else shorten(c, share, counter, keep_from=RESULT_END)
        for c in contents
    ]


def sent_tokens(counter: TokenCounter, message: dict[str, Any]) -> int:
    """A request message's exact tokens, counted as its stored bound is."""
    name = message.get("name", "") if message["role"] == "user" else ""
    tokens = message_tokens(counter, str(message.get("content") or ""), name, exact=True)
    if message.get("tool_calls"):
        tokens += counter.count(json.dumps(message["tool_calls"]))
    return tokens


def total_usage(usages: list[Usage]) -> Usage:
    """One turn's usage over its model calls (tool steps included)."""
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        model=usages[-1].model,
        estimated=any(u.estimated for u in usages),
    )


def usage_record(
    inbound: Inbound, usage: Usage, prices: PriceTable, at: datetime | None = None
) -> UsageRecord:
    """The usage row for a model call made on behalf of `inbound`'s author, with its cost."""
    return UsageRecord(
        platform=inbound.key.platform,
        user_id=inbound.user_id,
        model=usage.model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        estimated=usage.estimated,
        cost_usd=prices.cost(usage.model, usage.prompt_tokens, usage.completion_tokens),
        at=at,
    )


def to_openai_messages(
    window: Window, images: Mapping[int, str] | None = None
) -> list[dict[str, Any]]:
    """Stored messages as OpenAI chat messages; user messages carry their author's name.

    A message's images are image parts when `images` has them (attachment id -> URL), and a
    placeholder naming them when not (a model without vision, an image since deleted).
    """
    result: list[dict[str, Any]] = []
    for message in window.messages:
        text = message.content
        if message.role == "user" and message.author_name:
            text = f"{message.author_name}: {text}"
        urls = []
        for image in message.images or ():
            url = (images or {}).get(image["id"])
            if url is None:
                text += f"\n[image: {image['name']}]"
            else:
                urls.append(url)
        content: str | list[dict[str, Any]] = text
        if urls:
            content = [
                {"type": "text", "text": text},
                *({"type": "image_url", "image_url": {"url": url}} for url in urls),
            ]
        entry: dict[str, Any] = {"role": message.role, "content": content}
        if message.tool_calls:
            entry["tool_calls"] = message.tool_calls
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        result.append(entry)
    return result
