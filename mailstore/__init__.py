"""Mail shim: LMTP ingest and IMAP server over the shared bucket (issues 5-6)."""
