"""pipeline (placeholder; see issue)."""
