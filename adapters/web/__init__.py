"""Parley over HTTP: the API, the OpenAI-compatible endpoint and the pages (docs/API.md)."""
