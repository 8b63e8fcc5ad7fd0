"""fscache tier: LRU disk cache in front of the S3 client (issue 4)."""
