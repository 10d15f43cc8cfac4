"""helexa-bench: version-aware benchmarks of neurons (and other OpenAI-compatible engines),
stored in SQLite, served as a JSON API and reported as Markdown."""
