"""learning (placeholder; see issue)."""
