"""Where objects live: the local engine (segments + SQLite index)."""
