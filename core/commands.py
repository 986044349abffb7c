"""Commands every platform offers (/help, /reset, /persona, /personas, /usage, /forget).

Adapters map their native forms (Slack `/parley reset`, Telegram `/reset@bot`, Discord slash
commands) onto the text `/name argument`, which `parse_command` reads.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from core import wording
from core.events import ConversationKey, Inbound
from core.personas import Persona, PersonaCatalogue, resolve_persona
from core.policy import KINDS, AccessControl, Limits
from core.storage.base import AccessRule, SessionStore
from core.storage.privacy import Privacy
from core.storage.sql import SqlStore
from core.tools import ToolRegistry

COMMANDS: dict[str, str] = {
    "help": "show this help",
    "reset": "start a fresh conversation (earlier messages are kept, out of context)",
    "persona": "show the persona, or switch with /persona NAME",
    "personas": "list the personas",
    "usage": "show your token usage",
    "forget": "delete everything I keep about you (asks first)",
}

# Commands that change a channel for everyone in it. When PARLEY_ADMINS is set, only admins
# may use them (and /persona NAME); /access and /limits always need an admin, or anyone could
# lift their own limits.
ADMIN_COMMANDS: dict[str, str] = {
    "scope": "show or set what a conversation is here: /scope thread|channel|user|default",
    "tools": "show or set this channel's tools: /tools NAME,NAME | all | none",
    "kb": "show or set this channel's knowledge bases: /kb NAME,NAME | none | default",
    "limits": "show or set this channel's per-user limits: /limits rpm N | tokens N | default",
    "buffer": "hold replies until moderation passed them: /buffer on|off|default",
    "merge": "answer messages sent while I write in one answer: /merge on|off|default",
    "mentions": "answer thread follow-ups only when mentioned: /mentions required|optional",
    "access": "show or change the access lists: /access allow|block|remove KIND ID",
}
ALWAYS_ADMIN = frozenset({"access", "limits"})

# Platforms whose "channel" is only a container for one person's separate conversations (the
# terminal's is the user's account): /persona NAME changes the conversation, not the channel.
STANDALONE_CONVERSATIONS = frozenset({"console"})
SWITCH_ANSWERS = {
    "buffer": wording.BUFFER_SET,
    "mentions": wording.MENTIONS_SET,
    "merge": wording.MERGE_SET,
}
SCOPES = ("thread", "channel", "user")

ATTACHMENT_ONLY_COMMAND = "attachment_only"
"""The hidden command an adapter sends for a message of nothing the bot can read (Discord
stickers): the answer says so without calling the model."""

# "/name" or "/name@botname", then the argument. "/etc/hosts ..." is not a command.
_COMMAND = re.compile(r"^/([A-Za-z][A-Za-z0-9_]*)(?:@\S+)?(?:\s+(.*))?$", re.DOTALL)


def parse_command(text: str) -> tuple[str, str] | None:
    """`(name, argument)` when the text is a command, else None."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()


class CommandHandler:
    """Runs the core commands against the store and the persona catalogue."""

    def __init__(
        self,
        *,
        store: SessionStore,
        personas: PersonaCatalogue,
        default_persona: Persona,
        clock: Callable[[], datetime],
        access: AccessControl | None = None,
        tools: ToolRegistry | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._store = store
        self._personas = personas
        self._default = default_persona
        self._clock = clock
        self._access = access
        self._tools = tools or ToolRegistry()
        self._limits = limits or Limits()
        self._handlers: dict[str, Callable[[Inbound, str], Awaitable[str]]] = {
            "help": self._help,
            "reset": self._reset,
            "persona": self._persona,
            "personas": self._list_personas,
            "usage": self._usage,
            "forget": self._forget,
            "scope": self._scope,
            "tools": self._channel_tools,
            "kb": self._channel_knowledge,
            "limits": self._channel_limits,
            "buffer": self._buffer,
            "merge": self._merge,
            "mentions": self._mentions,
            "access": self._access_lists,
            # Not listed in /help: adapters send it for a message that holds only what the
            # bot cannot read (stickers).
            ATTACHMENT_ONLY_COMMAND: self._attachment_only,
        }

    async def run(self, inbound: Inbound, name: str, argument: str) -> str:
        """The answer to `/name argument`; an unknown name lists the commands that exist."""
        handler = self._handlers.get(name)
        if handler is None:
            available = ", ".join(f"/{command}" for command in COMMANDS)
            return wording.UNKNOWN_COMMAND.format(name=name, available=available)
        if name in ADMIN_COMMANDS and not self._may_administer(inbound, name):
            return wording.ADMIN_ONLY.format(what=f"use /{name}")
        return await handler(inbound, argument)

    def _may_administer(self, inbound: Inbound, name: str) -> bool:
        if self._access is not None and self._access.is_admin(inbound):
            return True
        no_admins = self._access is None or not self._access.has_admins
        return no_admins and name not in ALWAYS_ADMIN

    async def _help(self, inbound: Inbound, argument: str) -> str:
        lines = [f"/{name}: {text}" for name, text in COMMANDS.items()]
        admin = [
            f"/{name}: {text}"
            for name, text in ADMIN_COMMANDS.items()
            if self._may_administer(inbound, name)
        ]
        if admin:
            lines += ["", "For this channel:", *admin]
        return "Commands:\n" + "\n".join(lines)

    async def _attachment_only(self, inbound: Inbound, argument: str) -> str:
        return wording.ATTACHMENT_ONLY

    async def _reset(self, inbound: Inbound, argument: str) -> str:
        await self._store.reset(key=inbound.key)
        return wording.RESET_DONE

    async def _current(self, inbound: Inbound) -> Persona:
        state = await self._store.conversation(key=inbound.key)
        return resolve_persona(self._personas, self._default, state.persona, state.channel_persona)

    async def _persona(self, inbound: Inbound, argument: str) -> str:
        if not argument:
            current = await self._current(inbound)
            return wording.PERSONA_CURRENT.format(
                name=current.name, description=current.description
            )
        if not inbound.is_direct and not self._may_administer(inbound, "persona"):
            return wording.ADMIN_ONLY.format(what="change the persona of a channel")
        persona = self._personas.get(argument)
        if persona is None:
            return wording.PERSONA_UNKNOWN.format(
                name=argument, available=", ".join(self._personas.names())
            )
        channel = inbound.key.platform not in STANDALONE_CONVERSATIONS
        await self._store.set_persona(key=inbound.key, persona=persona.name, channel=channel)
        where = "channel" if channel else "conversation"
        return wording.PERSONA_SET.format(
            where=where, name=persona.name, description=persona.description
        )

    async def _list_personas(self, inbound: Inbound, argument: str) -> str:
        current = await self._current(inbound)
        # The marker is words at the end of the line: a leading "*" or "→" turns into a bullet
        # or vanishes in the Markdown renderers of Slack, Telegram and Discord.
        lines = [
            f"- {p.name}: {p.description}"
            + (wording.PERSONA_IN_USE if p.name == current.name else "")
            for p in self._personas
        ]
        return wording.PERSONAS_HEADER + "\n" + "\n".join(lines)

    async def _usage(self, inbound: Inbound, argument: str) -> str:
        now = self._clock()
        midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        platform, user = inbound.key.platform, inbound.user_id
        today = await self._store.usage_since(platform=platform, user_id=user, since=midnight)
        month = await self._store.usage_since(
            platform=platform, user_id=user, since=now - timedelta(days=30)
        )
        state = await self._store.conversation(key=inbound.key)
        conversation = await self._store.conversation_tokens(conversation_id=state.id)
        report = wording.USAGE_REPORT.format(
            today_tokens=today.tokens,
            today_turns=_replies(today.turns),
            month_tokens=month.tokens,
            month_turns=_replies(month.turns),
            cost=_cost(month.cost_usd),
            conversation_tokens=conversation,
        )
        budget = (await self._channel_limits_of(inbound.key)).tokens_per_day
        if budget:
            left = max(budget - today.tokens, 0)
            report += " " + wording.BUDGET_LEFT.format(left=left, limit=budget)
        return report

    async def _forget(self, inbound: Inbound, argument: str) -> str:
        # Stateless confirmation: any process may take the second message, and a plain word
        # is enough, since it only ever deletes the sender's own data.
        if not isinstance(self._store, SqlStore):
            return wording.FORGET_UNAVAILABLE
        privacy = Privacy(self._store)
        platform = inbound.key.platform
        # Today's usage rows stay where a budget may apply, or /forget would reset it.
        budgets = await privacy.budgets_apply(
            platform=platform, default_tokens_per_day=self._limits.tokens_per_day
        )
        if argument.lower() != "confirm":
            kept = wording.FORGET_USAGE_KEPT if budgets else ""
            return wording.FORGET_ASK.format(usage_kept=kept)
        now = self._clock().astimezone(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        forgotten = await privacy.forget(
            platform=platform,
            user_id=inbound.user_id,
            keep_event=inbound.event_id,
            keep_usage_since=midnight if budgets else None,
        )
        if not inbound.is_direct:  # counts would tell the channel how much they wrote
            return wording.FORGET_DONE
        return wording.FORGET_DONE_COUNTED.format(
            messages=_plural(forgotten.messages, "message"),
            files=_plural(forgotten.attachments, "image or file", "images and files"),
            conversations=_plural(forgotten.conversations, "conversation"),
        )

    async def _channel_limits_of(self, key: ConversationKey) -> Limits:
        return self._limits.for_channel(await self._store.channel(key=key))

    # --- admin commands ---------------------------------------------------------------------

    async def _scope(self, inbound: Inbound, argument: str) -> str:
        choice = argument.lower()
        if not choice:
            scope = (await self._store.channel(key=inbound.key)).scope
            return wording.SCOPE_CURRENT.format(scope=scope or "the platform's default")
        if choice == "chat":  # Telegram's word for a channel
            choice = "channel"
        if choice != "default" and choice not in SCOPES:
            return wording.BAD_ARGUMENT.format(usage=ADMIN_COMMANDS["scope"])
        scope = None if choice == "default" else choice
        await self._store.update_channel(key=inbound.key, scope=scope)
        return wording.SCOPE_SET.format(scope=scope or "the platform's default")

    async def _channel_tools(self, inbound: Inbound, argument: str) -> str:
        persona = await self._current(inbound)
        choice = argument.lower()
        if not choice:
            chosen = (await self._store.channel(key=inbound.key)).tools
            usable = [t for t in persona.tools if chosen is None or t in chosen]
            return wording.TOOLS_CURRENT.format(
                persona=persona.name,
                tools=", ".join(usable) or "none",
                offered=", ".join(persona.tools) or "none",
            )
        names: list[str] | None
        if choice == "all":
            names = None
        elif choice == "none":
            names = []
        else:
            names = [n for n in re.split(r"[\s,]+", argument) if n]
            unknown = [n for n in names if n not in self._tools.names()]
            if unknown:
                return wording.TOOLS_UNKNOWN.format(
                    names=", ".join(unknown), available=", ".join(self._tools.names()) or "none"
                )
        await self._store.update_channel(key=inbound.key, tools=names)
        if names is None:
            return wording.TOOLS_SET_ALL
        if not names:
            return wording.TOOLS_SET_NONE
        return wording.TOOLS_SET.format(tools=", ".join(names))

    async def _channel_knowledge(self, inbound: Inbound, argument: str) -> str:
        choice = argument.strip().lower()
        if not choice:
            chosen = (await self._store.channel(key=inbound.key)).knowledge
            used = (await self._current(inbound)).knowledge if chosen is None else chosen
            return wording.KB_CURRENT.format(names=", ".join(used) or "none")
        names: list[str] | None
        if choice == "default":
            names = None
        elif choice == "none":
            names = []
        else:
            names = [n for n in re.split(r"[\s,]+", argument) if n]
        await self._store.update_channel(key=inbound.key, knowledge=names)
        if names is None:
            return wording.KB_SET_DEFAULT
        return wording.KB_SET.format(names=", ".join(names) or "none")

    async def _channel_limits(self, inbound: Inbound, argument: str) -> str:
        match = re.fullmatch(r"(rpm|tokens)\s+(\d+|default)", argument.lower())
        if argument and match is None:
            return wording.BAD_ARGUMENT.format(usage=ADMIN_COMMANDS["limits"])
        if match is not None:
            column = {"rpm": "user_rpm", "tokens": "user_tokens_per_day"}[match.group(1)]
            value = None if match.group(2) == "default" else int(match.group(2))
            await self._store.update_channel(key=inbound.key, **{column: value})
        limits = await self._channel_limits_of(inbound.key)
        rpm, tokens = limits.requests_per_minute, limits.tokens_per_day
        return wording.LIMITS_CURRENT.format(
            rpm=f"{rpm} requests a minute" if rpm else "no request limit",
            tokens=f"{tokens:,} tokens a day" if tokens else "no daily token budget",
        )

    async def _buffer(self, inbound: Inbound, argument: str) -> str:
        choices = {"on": True, "off": False, "default": None}
        return await self._switch(inbound, argument, "buffer", "buffer_output", choices)

    async def _merge(self, inbound: Inbound, argument: str) -> str:
        choices = {"on": True, "off": False, "default": None}
        return await self._switch(inbound, argument, "merge", "merge_queued", choices)

    async def _mentions(self, inbound: Inbound, argument: str) -> str:
        choices = {"required": True, "optional": False, "default": None}
        return await self._switch(inbound, argument, "mentions", "require_mention", choices)

    async def _switch(
        self,
        inbound: Inbound,
        argument: str,
        command: str,
        setting: str,
        choices: dict[str, bool | None],
    ) -> str:
        """A channel's on/off/default setting, set by /buffer, /merge or /mentions."""
        if argument.lower() not in choices:
            return wording.BAD_ARGUMENT.format(usage=ADMIN_COMMANDS[command])
        value = choices[argument.lower()]
        await self._store.update_channel(key=inbound.key, **{setting: value})
        return SWITCH_ANSWERS[command][value]

    async def _access_lists(self, inbound: Inbound, argument: str) -> str:
        assert self._access is not None  # only admins get here, and admins need access lists
        if not argument:
            rules = await self._access.rules()
            if not rules:
                return wording.ACCESS_EMPTY
            lines = [
                f"- {rule.list} {rule.kind} {rule.value}"
                + (f" (on {rule.platform})" if rule.platform else "")
                for rule in sorted(rules, key=lambda r: (r.list, r.kind, r.value))
            ]
            return "Access lists:\n" + "\n".join(lines)
        words = argument.split()
        remove = words[0].lower() == "remove"
        if remove:
            words = words[1:]
        if len(words) != 3:
            return wording.BAD_ARGUMENT.format(usage=ADMIN_COMMANDS["access"])
        list_, kind, value = words[0].lower(), words[1].lower(), words[2]
        if list_ not in ("allow", "block") or kind not in KINDS:
            return wording.BAD_ARGUMENT.format(usage=ADMIN_COMMANDS["access"])
        if value.lower() == "here" and kind != "user":
            value = inbound.key.channel if kind == "channel" else inbound.key.workspace
        rule = AccessRule(platform=inbound.key.platform, kind=kind, value=value, list=list_)
        if not remove:
            await self._store.add_access_rule(rule=rule, added_by=inbound.user_id)
            answer = wording.ACCESS_ADDED
        elif await self._store.remove_access_rule(rule=rule):
            answer = wording.ACCESS_REMOVED
        else:
            answer = wording.ACCESS_NOT_FOUND
        self._access.forget_cache()
        return answer.format(list=list_, kind=kind, value=value)


def _cost(usd: float) -> str:
    if not usd:
        return ""  # no priced model was used (a local one, say)
    return f", about ${usd:,.2f}" if usd >= 0.01 else ", under $0.01"


def _plural(count: int, one: str, many: str = "") -> str:
    return f"{count} {one}" if count == 1 else f"{count} {many or one + 's'}"


def _replies(count: int) -> str:
    return f"{count} reply" if count == 1 else f"{count} replies"
