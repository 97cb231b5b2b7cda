"""Replay: recordings as scripts, normalization, safety, the engine and its targets."""
