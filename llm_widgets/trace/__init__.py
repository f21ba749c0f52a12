"""The trace engine: instrumented forward and generate runs (pure torch, no widget code)."""
