"""Tools of MCP servers (PARLEY_MCP_SERVERS), offered to personas like built-in ones.

Each server is started (stdio) or connected (streamable HTTP) with the official `mcp` SDK when
Parley starts; its tools are registered as `SERVER__TOOL` (OpenAI's function names allow no
dot). A call goes through the engine's tool path: the arguments are the model's JSON, the
call has the server's timeout, the result is capped and wrapped as data, and an error is
returned to the model. A server that does not start is one log line, and Parley runs without
its tools.
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

from pydantic import ConfigDict, create_model

from core.config import McpServer
from core.tools import Tool, ToolRegistry, _Param

log = logging.getLogger(__name__)

START_SECONDS = 30.0
SEPARATOR = "__"  # SERVER__TOOL: OpenAI's function names allow no dot
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Any JSON object: the server validates its own arguments (its schema is what the model sees).
_ANY_ARGUMENTS = create_model("McpArguments", __config__=ConfigDict(extra="allow"))


class McpTools:
    """`async with McpTools(servers, registry):` the servers' tools are in the registry."""

    def __init__(self, servers: dict[str, McpServer], registry: ToolRegistry) -> None:
        self._servers = servers
        self._registry = registry
        self._stack = AsyncExitStack()
        self.failed: list[str] = []  # servers that did not start

    async def __aenter__(self) -> McpTools:
        for name, server in self._servers.items():
            stack = AsyncExitStack()
            try:
                async with asyncio.timeout(START_SECONDS):
                    session, tools = await self._connect(stack, server)
            except Exception as exc:
                await stack.aclose()
                self.failed.append(name)
                log.error(
                    "MCP server %s did not start (%s); Parley runs without its tools",
                    name,
                    _reason(exc),
                )
                continue
            self._stack.push_async_exit(stack)
            for tool in tools:
                self._register(name, server, session, tool)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _connect(self, stack: AsyncExitStack, server: McpServer) -> tuple[Any, list[Any]]:
        from mcp.client.session import ClientSession  # the mcp extra installs it

        if server.command is not None:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            parameters = StdioServerParameters(
                command=server.command, args=server.args, env=server.env or None, cwd=server.cwd
            )
            read, write = await stack.enter_async_context(stdio_client(parameters))
        else:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            client = None
            if server.headers:  # given to the SDK, which then leaves closing it to us
                client = await stack.enter_async_context(httpx2.AsyncClient(headers=server.headers))
            read, write, *_ = await stack.enter_async_context(
                streamable_http_client(str(server.url), http_client=client)
            )
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        listed = await session.list_tools()
        return session, list(listed.tools)

    def _register(self, server_name: str, server: McpServer, session: Any, tool: Any) -> None:
        name = f"{server_name}{SEPARATOR}{tool.name}"
        if not _NAME.match(name):
            log.warning(
                "MCP tool %s of %s skipped: its name is not allowed", tool.name, server_name
            )
            return
        remote = tool.name
        timeout = server.timeout

        async def call(arguments: dict[str, Any] | None) -> str:
            result = await session.call_tool(remote, arguments or {}, read_timeout_seconds=timeout)
            text = "\n".join(_text(part) for part in result.content) or _structured(result)
            if result.is_error:
                raise ValueError(text or "the server reported an error")
            return text

        self._registry.register(
            Tool(
                name=name,
                description=tool.description or f"{tool.name} (MCP server {server_name})",
                parameters=tool.input_schema or {"type": "object", "properties": {}},
                timeout=timeout,
                function=call,
                arguments_model=_ANY_ARGUMENTS,
                source=f"MCP server {server_name}",
                call_plan=(_Param("arguments", "model_extra", True),),
            )
        )


def _text(part: Any) -> str:
    kind = getattr(part, "type", "")
    if kind == "text":
        return str(part.text)
    return f"[{kind or 'content'} omitted]"


def _structured(result: Any) -> str:
    structured = getattr(result, "structured_content", None)
    return "" if structured is None else str(structured)


def _reason(exc: BaseException) -> str:
    """The first real error inside anyio's exception groups, in one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return f"no answer within {START_SECONDS:g} s"
    if isinstance(exc, ImportError):
        return "the mcp extra is missing: pip install 'parley[mcp]'"
    detail = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__
