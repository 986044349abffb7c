"""The chat platforms `parley run` knows, and the settings each needs (no SDK imported here)."""

from __future__ import annotations

from core.config import Settings

# Name -> the setting whose presence turns the platform on.
PLATFORMS = {
    "slack": "SLACK_BOT_TOKEN",
    "telegram": "TELEGRAM_BOT_TOKEN",
    "discord": "DISCORD_BOT_TOKEN",
}


def configured(settings: Settings, platform: str) -> bool:
    return getattr(settings, f"{platform}_bot_token") is not None
