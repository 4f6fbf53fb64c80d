"""index (placeholder; see issue)."""
