"""Pure S3 protocol: signing, canonicalization, XML and error codes. No I/O."""
