"""metrics (placeholder; see issue)."""
