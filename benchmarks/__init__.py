"""Benchmarks: llmkit's real code paths timed side by side with plain baselines (`make bench`)."""
