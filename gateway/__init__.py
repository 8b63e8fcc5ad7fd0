"""S3 gateway tier: protocol (s3/), storage (engine/), auth, aiohttp app and CLI."""
