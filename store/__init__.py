"""Persistence: Pony entities on SQLite, the functions that use them, the data directory."""
