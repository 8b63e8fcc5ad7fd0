"""The IMAP side of the mail shim (issue 6): the sans-I/O command parser so far."""
