"""The Discord adapter: gateway messages and interactions in, Discord Markdown replies out."""
