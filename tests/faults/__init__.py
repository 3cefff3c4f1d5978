"""Fault injection: each kind of mistake a user plausibly makes, per stage (issue 15)."""
