"""The `parley` command line (also `python -m bots`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from importlib import metadata
from signal import SIGINT, SIGTERM
from typing import Any

from bots.logs import RedactSecrets, announce, configure_logging
from bots.platforms import PLATFORMS
from core.config import Settings, load_settings
from core.errors import ConfigError
from core.storage.base import StoredFlag

log = logging.getLogger("parley")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley",
        description="An LLM in your chat: Slack, Discord, Telegram, terminal.",
        epilog="Settings come from the environment and ./.env (every one is listed, with a "
        "comment, in .env.example). `parley COMMAND --help` tells more.",
    )
    parser.add_argument("--version", action="version", version=f"parley {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log at DEBUG and show the traceback of an unexpected error (secrets masked); "
        "PARLEY_LOG_LEVEL=DEBUG does the same",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, details: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=details,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    chat = command(
        "chat",
        "chat in the terminal (continues the last chat)",
        "Reads: OPENAI_API_KEY / OPENAI_BASE_URL and PARLEY_MODEL (none set: the embedded local\n"
        "model), DATABASE_URL, PARLEY_PERSONA. Piped input: one message per line in, each\n"
        "reply out on stdout.\n\n"
        "examples:\n  parley chat\n  parley chat --new --persona editor\n"
        "  echo 'What is a lease?' | parley chat",
    )
    chat.add_argument("--new", action="store_true", help="start a new conversation")
    chat.add_argument("--persona", metavar="NAME", help="use this persona in the conversation")

    run = command(
        "run",
        "connect to chat platforms (all whose credentials are set, or those named)",
        "Reads: SLACK_BOT_TOKEN (+ SLACK_APP_TOKEN or SLACK_SIGNING_SECRET), TELEGRAM_BOT_TOKEN,\n"
        "DISCORD_BOT_TOKEN, the model and DATABASE_URL; PARLEY_HTTP_HOST/PORT for HTTP events\n"
        "and webhooks. Stops cleanly on Ctrl-C or SIGTERM.\n\n"
        "`parley run http` serves the HTTP API, the web chat and the admin console (on by\n"
        "itself when an API key exists or PARLEY_JWT_* is set; see docs/API.md).\n\n"
        "examples:\n  parley run\n  parley run telegram\n  parley run slack discord\n"
        "  parley run http",
    )
    run.add_argument(
        "platforms", nargs="*", metavar="PLATFORM", help=", ".join([*PLATFORMS, "http"])
    )

    flags = command(
        "flags",
        "list moderation flags for review, newest first",
        "Reads: DATABASE_URL.\n\nexamples:\n  parley flags --since 24h\n"
        "  parley flags --action block --json",
    )
    flags.add_argument("--since", metavar="AGE", type=_age, help="only newer ones, e.g. 24h or 7d")
    flags.add_argument(
        "--action", choices=["block", "redact", "flag", "unchecked"], help="only this action"
    )
    flags.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    flags.add_argument("--json", action="store_true", help="one JSON object per line")

    keys = command(
        "keys",
        "create, list and revoke keys for the HTTP API (parley run http)",
        "Reads: DATABASE_URL. A new key is printed once on stdout; only its SHA-256 is kept.\n"
        "Each key is a user for limits and budgets; admin keys may use /admin.\n\n"
        "examples:\n  parley keys create alice\n  parley keys create ops --admin\n"
        "  parley keys list\n  parley keys revoke alice",
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="make a key and print it once")
    create.add_argument("name", type=_key_name, help="who or what uses it, e.g. alice or my-app")
    create.add_argument("--admin", action="store_true", help="it may use the admin console")
    key_commands.add_parser("list", help="the keys: name, prefix, admin, created, last used")
    revoke = key_commands.add_parser("revoke", help="stop a key at once")
    revoke.add_argument("name")

    kb = command(
        "kb",
        "manage knowledge bases: documents the bot answers from",
        "Reads: DATABASE_URL, PARLEY_EMBEDDING_MODEL (local: the shipped offline model).\n"
        "Markdown, text, HTML and PDF; folders are read recursively; adding an unchanged\n"
        "file again does nothing, a changed one replaces its old chunks.\n\n"
        "examples:\n  parley kb add docs/ handbook.pdf --kb handbook\n"
        "  parley kb add https://example.com/faq.html --kb handbook\n"
        "  parley kb search 'how do I reset my password' --kb handbook\n"
        "  parley kb list\n  parley kb remove docs/old.md --kb handbook",
    )
    kb_commands = kb.add_subparsers(dest="kb_command", required=True, metavar="ACTION")
    kb_add = kb_commands.add_parser("add", help="add or update files, folders, URLs")
    kb_add.add_argument("sources", nargs="+", metavar="PATH|URL", type=_source)
    kb_list = kb_commands.add_parser("list", help="the documents, by knowledge base")
    kb_remove = kb_commands.add_parser(
        "remove", help="remove documents (none named: the whole knowledge base)"
    )
    kb_remove.add_argument("sources", nargs="*", metavar="PATH|URL", type=_source)
    kb_search = kb_commands.add_parser("search", help="the best passages for a question")
    kb_search.add_argument("query")
    kb_search.add_argument("--limit", type=int, default=5, help="how many (default 5)")
    kb_rebuild = kb_commands.add_parser(
        "rebuild", help="embed a base again after PARLEY_EMBEDDING_MODEL changed"
    )
    for sub in (kb_add, kb_remove, kb_search, kb_rebuild):
        sub.add_argument("--kb", default="default", type=_key_name, help="its name (default)")
    kb_list.add_argument("--kb", type=_key_name, help="only this knowledge base")

    export = command(
        "export",
        "write what Parley keeps about a user as JSON (what /forget would delete)",
        "Reads: DATABASE_URL. Their conversations (whole where nobody else wrote; in shared\n"
        "ones their messages and the replies to them), images and files (base64), turns,\n"
        "usage, moderation flags, and access-list entries naming them. User ids are per\n"
        "platform: without --platform, every platform where the id appears.\n\n"
        "examples:\n  parley export --user U024BE7LH --platform slack --output ada.json\n"
        "  parley export --user alice --platform api --no-attachment-data",
    )
    export.add_argument("--user", required=True, metavar="ID", help="their id on the platform")
    export.add_argument("--platform", help="slack, discord, telegram, api, console, ...")
    export.add_argument("--output", metavar="FILE", help="write here (default: stdout)")
    export.add_argument(
        "--no-attachment-data",
        action="store_true",
        help="list images and files without their data",
    )

    forget = command(
        "forget",
        "delete what Parley keeps about a user (as /forget does, for someone who cannot ask)",
        "Reads: DATABASE_URL. Deletes what `parley export` lists: conversations where only they\n"
        "wrote, in shared ones their messages and the replies to them (and summaries built on\n"
        "them), their images and files, turns, usage and moderation flags. Without --yes it\n"
        "only says what it would delete. User ids are per platform.\n\n"
        "examples:\n  parley forget --user U024BE7LH --platform slack\n"
        "  parley forget --user U024BE7LH --platform slack --yes",
    )
    forget.add_argument("--user", required=True, metavar="ID", help="their id on the platform")
    forget.add_argument(
        "--platform", required=True, help="slack, discord, telegram, api, console, ..."
    )
    forget.add_argument("--yes", action="store_true", help="delete (default: only tell)")

    db = command(
        "db",
        "manage the database schema",
        "Reads: DATABASE_URL. `parley run` and `parley chat` apply pending migrations at start\n"
        "unless PARLEY_AUTO_MIGRATE=false.\n\n"
        "examples:\n  parley db current\n  parley db upgrade\n  parley db downgrade -1",
    )
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="apply pending migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="revert migrations")
    downgrade.add_argument("revision", help="target revision, e.g. -1 or base")
    db_commands.add_parser("current", help="show the schema revision")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    redact = RedactSecrets(())
    debug: bool = arguments.debug
    try:
        settings = load_settings()
        if debug:
            settings = settings.model_copy(update={"log_level": "DEBUG"})
        debug = settings.log_level == "DEBUG"
        redact = configure_logging(settings)
        if arguments.command == "chat":
            return asyncio.run(_chat(settings, new=arguments.new, persona=arguments.persona))
        if arguments.command == "run":
            return asyncio.run(_run(settings, arguments.platforms))
        if arguments.command == "flags":
            return asyncio.run(_flags(settings, arguments))
        if arguments.command == "keys":
            return asyncio.run(_keys(settings, arguments))
        if arguments.command == "kb":
            return asyncio.run(_kb(settings, arguments))
        if arguments.command == "export":
            return _export(settings, arguments)
        if arguments.command == "forget":
            return asyncio.run(_forget(settings, arguments))
        return asyncio.run(_db(settings, arguments.db_command, getattr(arguments, "revision", "")))
    except ConfigError as exc:
        print(f"parley: {redact.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, or a failure nobody put into words yet
        if debug:
            print(redact.redact(traceback.format_exc()), end="", file=sys.stderr)
        else:
            print(
                f"parley: {redact.redact(_what_happened(exc))}; run again with --debug for details",
                file=sys.stderr,
            )
        return 2


async def _chat(settings: Settings, *, new: bool, persona: str | None) -> int:
    from adapters.console import Console, conversation_key, local_user
    from bots.bootstrap import build_engine, load_personas

    catalogue, _ = load_personas(settings)
    if persona is not None and catalogue.get(persona) is None:
        raise ConfigError(
            f"--persona: unknown persona '{persona}'; available: {', '.join(catalogue.names())}"
        )
    async with build_engine(settings) as runtime:
        user = local_user()
        key = await conversation_key(runtime.store, user=user, new=new)
        console = Console(
            runtime.engine,
            key,
            user=user,
            bot_name=settings.bot_name,
            model_label=runtime.model_label,
        )
        if persona is not None:
            await runtime.store.set_persona(key=key, persona=persona)
        return await console.run()


async def _run(settings: Settings, platforms: list[str]) -> int:
    from bots.bootstrap import build_engine, chat_platforms

    async with build_engine(settings) as runtime, chat_platforms(settings, runtime, platforms):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal in (SIGINT, SIGTERM):
            loop.add_signal_handler(signal, stop.set)
        announce(settings, "Parley is running; Ctrl-C stops it.")
        await stop.wait()
    return 0


def _version() -> str:
    try:
        return metadata.version("parley")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _age(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("use minutes, hours or days, e.g. 30m, 24h or 7d")
    unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


async def _flags(settings: Settings, arguments: argparse.Namespace) -> int:
    from bots.bootstrap import open_store

    store = await open_store(settings)
    try:
        since = datetime.now(UTC) - arguments.since if arguments.since else None
        flags = await store.flags(since=since, limit=arguments.limit, action=arguments.action)
    finally:
        await store.close()
    for flag in flags:
        if arguments.json:
            print(json.dumps(_flag_json(flag), ensure_ascii=False))
            continue
        key = flag.key
        where = "/".join(part for part in (key.workspace, key.channel, key.thread) if part)
        found = ", ".join(
            f"{name}={flag.scores[name]:.2f}" if name in flag.scores else name
            for name in flag.categories
        )
        print(
            f"{flag.at:%Y-%m-%d %H:%M:%S}Z #{flag.id} {key.platform} {where} user {flag.user_id}: "
            f"{flag.direction} {flag.action.upper()} {found}".rstrip()
        )
        if flag.excerpt:
            print("    " + flag.excerpt.replace("\n", "\n    "))
    if not flags and not arguments.json:
        print("No moderation flags" + (" in that period." if arguments.since else "."))
    return 0


async def _keys(settings: Settings, arguments: argparse.Namespace) -> int:
    from bots.bootstrap import open_store
    from core.storage.api import ApiStore

    store = await open_store(settings)
    try:
        keys = ApiStore(store)
        if arguments.keys_command == "create":
            try:
                key = await keys.create_key(name=arguments.name, admin=arguments.admin)
            except ValueError as exc:
                raise ConfigError(f"parley keys create: {exc}") from None
            print(key)
            print(
                f"Key for {arguments.name}{' (admin)' if arguments.admin else ''}: shown only "
                "now; keep it somewhere safe. `parley keys revoke NAME` stops it.",
                file=sys.stderr,
            )
        elif arguments.keys_command == "revoke":
            if not await keys.revoke_key(name=arguments.name):
                raise ConfigError(f"parley keys revoke: no live key named {arguments.name!r}")
            print(f"Revoked the key of {arguments.name}.")
        else:
            listed = await keys.keys()
            for k in listed:
                used = f"{k.last_used_at:%Y-%m-%d %H:%M}Z" if k.last_used_at else "never"
                state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "live"
                print(
                    f"{k.name:20} {k.prefix}…  {'admin' if k.admin else 'user ':5}  "
                    f"created {k.created_at:%Y-%m-%d}  last used {used}  {state}"
                )
            if not listed:
                print("No API keys. `parley keys create NAME` makes one.")
    finally:
        await store.close()
    return 0


async def _kb(settings: Settings, arguments: argparse.Namespace) -> int:
    from bots import kb
    from bots.bootstrap import open_store

    store = await open_store(settings)
    try:
        return await kb.run(settings, store, arguments)
    finally:
        await store.close()


def _export(settings: Settings, arguments: argparse.Namespace) -> int:
    data = asyncio.run(_exported(settings, arguments))
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if arguments.output is None:
        sys.stdout.write(text)
        return 0
    # Someone's personal data: readable by its owner only.
    descriptor = os.open(arguments.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8") as output:
        output.write(text)
    found = sum(len(c["messages"]) for c in data["conversations"])
    print(
        f"Wrote {found} messages in {len(data['conversations'])} conversations of "
        f"{arguments.user} to {arguments.output}.",
        file=sys.stderr,
    )
    return 0


async def _exported(settings: Settings, arguments: argparse.Namespace) -> dict[str, Any]:
    from bots.bootstrap import open_store
    from core.storage.privacy import Privacy

    store = await open_store(settings)
    try:
        return await Privacy(store).export(
            user_id=arguments.user,
            platform=arguments.platform,
            attachment_data=not arguments.no_attachment_data,
        )
    finally:
        await store.close()


async def _forget(settings: Settings, arguments: argparse.Namespace) -> int:
    from bots.bootstrap import open_store
    from core.storage.privacy import Privacy

    who = f"{arguments.user} on {arguments.platform}"
    store = await open_store(settings)
    try:
        privacy = Privacy(store)
        if not arguments.yes:
            data = await privacy.export(
                user_id=arguments.user, platform=arguments.platform, attachment_data=False
            )
            found = sum(len(c["messages"]) for c in data["conversations"])
            print(
                f"{found} messages in {len(data['conversations'])} conversations of {who} "
                "would be deleted, with their images and files, turns, usage and flags. "
                "Nothing was deleted: add --yes to delete."
            )
            return 0
        gone = await privacy.forget(platform=arguments.platform, user_id=arguments.user)
    finally:
        await store.close()
    print(
        f"Deleted for {who}: {gone.messages} messages, {gone.attachments} images and files, "
        f"{gone.conversations} whole conversations, {gone.turns} turns, {gone.usage} usage "
        f"rows, {gone.flags} flags; {gone.summaries_cleared} shared summaries cleared."
    )
    return 0


def _source(text: str) -> str:
    """A URL as given, a path made absolute: how a document is named in its base."""
    return text if text.startswith(("http://", "https://")) else os.path.abspath(text)


def _key_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", text):
        raise argparse.ArgumentTypeError(
            "letters, digits and _ . @ - (at most 64, starting with a letter or digit)"
        )
    return text


def _flag_json(flag: StoredFlag) -> dict[str, object]:
    """The flag's fields, its conversation's key flattened in (platform, workspace, ...)."""
    data = asdict(flag)
    return {"id": data.pop("id"), **data.pop("key"), **data, "at": flag.at.isoformat()}


async def _db(settings: Settings, action: str, revision: str) -> int:
    from alembic.util import CommandError as AlembicError
    from sqlalchemy.exc import SQLAlchemyError

    from core.storage.database import create_database_engine, current_revision, migrate

    engine = create_database_engine(settings.database_url)
    try:
        if action == "current":
            print(await current_revision(engine) or "(empty database)")
        else:
            await migrate(engine, revision, down=action == "downgrade")
            print(f"database at {await current_revision(engine) or 'base'}")
    except AlembicError as exc:  # an unknown revision, a downgrade below base
        raise ConfigError(f"parley db {action}: {_first_line(exc)}") from None
    except (OSError, SQLAlchemyError) as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise ConfigError(
            f"DATABASE_URL: cannot use {where} ({_first_line(exc)}); check that the database "
            "server is running and the URL is right"
        ) from None
    finally:
        await engine.dispose()
    return 0


def _what_happened(exc: BaseException) -> str:
    """`unexpected RuntimeError: its message's first line`, for the one-line report."""
    lines = str(exc).strip().splitlines()
    return f"unexpected {type(exc).__name__}" + (f": {lines[0]}" if lines else "")


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
