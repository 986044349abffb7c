"""The chat platforms `parley run` knows, and the settings each needs (no SDK imported here)."""

from __future__ import annotations

from core.config import Settings

# Name -> the setting whose presence turns the platform on.
PLATFORMS = {
    "slack": "SLACK_BOT_TOKEN",
    "telegram": "TELEGRAM_BOT_TOKEN",
    "discord": "DISCORD_BOT_TOKEN",
}

# Not a chat platform: the API and its pages (`parley run http`); on by itself when an API key
# exists or a JWT setting is set.
HTTP = "http"


def configured(settings: Settings, platform: str) -> bool:
    return getattr(settings, f"{platform}_bot_token") is not None
