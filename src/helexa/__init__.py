"""helexa: self-hosted LLM serving for a small fleet of mismatched GPU boxes."""

__version__ = "0.1.0"
