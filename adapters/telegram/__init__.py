"""The Telegram adapter: Bot API updates in, Telegram HTML replies out."""
