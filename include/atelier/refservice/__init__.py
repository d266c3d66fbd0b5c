"""The reference inference service: the studio renderer behind an async job API, with its own
rate limit and fault injection, so every remote failure mode can be exercised locally."""
