"""Commands every platform offers (/help, /reset, /persona, /personas, /usage).

Adapters map their native forms (Slack `/parley reset`, Telegram `/reset@bot`, Discord slash
commands) onto the text `/name argument`, which `parse_command` reads.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from core import wording
from core.events import Inbound
from core.personas import Persona, PersonaCatalogue, resolve_persona
from core.storage.base import SessionStore

COMMANDS: dict[str, str] = {
    "help": "show this help",
    "reset": "start a fresh conversation (earlier messages are kept, out of context)",
    "persona": "show the persona, or switch with /persona NAME",
    "personas": "list the personas",
    "usage": "show your token usage",
}

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
    ) -> None:
        self._store = store
        self._personas = personas
        self._default = default_persona
        self._clock = clock
        self._handlers: dict[str, Callable[[Inbound, str], Awaitable[str]]] = {
            "help": self._help,
            "reset": self._reset,
            "persona": self._persona,
            "personas": self._list_personas,
            "usage": self._usage,
        }

    async def run(self, inbound: Inbound, name: str, argument: str) -> str:
        """The answer to `/name argument`; an unknown name lists the commands that exist."""
        handler = self._handlers.get(name)
        if handler is None:
            available = ", ".join(f"/{command}" for command in COMMANDS)
            return wording.UNKNOWN_COMMAND.format(name=name, available=available)
        return await handler(inbound, argument)

    async def _help(self, inbound: Inbound, argument: str) -> str:
        lines = [f"/{name}: {text}" for name, text in COMMANDS.items()]
        return "Commands:\n" + "\n".join(lines)

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
        persona = self._personas.get(argument)
        if persona is None:
            return wording.PERSONA_UNKNOWN.format(
                name=argument, available=", ".join(self._personas.names())
            )
        await self._store.set_persona(key=inbound.key, persona=persona.name)
        return wording.PERSONA_SET.format(name=persona.name, description=persona.description)

    async def _list_personas(self, inbound: Inbound, argument: str) -> str:
        current = await self._current(inbound)
        lines = [
            f"{'*' if p.name == current.name else '-'} {p.name}: {p.description}"
            for p in self._personas
        ]
        return "Personas (* is in use; switch with /persona NAME):\n" + "\n".join(lines)

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
        return wording.USAGE_REPORT.format(
            today_tokens=today.tokens,
            today_turns=_replies(today.turns),
            month_tokens=month.tokens,
            month_turns=_replies(month.turns),
            cost=f", about ${month.cost_usd:.4f}" if month.cost_usd else "",
            conversation_tokens=conversation,
        )


def _replies(count: int) -> str:
    return f"{count} reply" if count == 1 else f"{count} replies"
