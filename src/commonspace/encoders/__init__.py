"""encoders (placeholder; see issue)."""
