"""Constrained decoding, daemon side: the grammar a request's output must match (grammar.py)
and when a request gets one (plan.py). The worker compiles and enforces it (engine)."""
