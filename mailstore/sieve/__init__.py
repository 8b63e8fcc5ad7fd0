"""Sieve (RFC 5228) for LMTP delivery: the grammar, its checks, and (next) the interpreter."""
