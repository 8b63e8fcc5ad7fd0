"""How work runs, below every part: prefork worker processes, progress display, a batching thread.

Each part (gateway, cache, mailstore, appliance) may import this package; it
imports none of them.
"""
