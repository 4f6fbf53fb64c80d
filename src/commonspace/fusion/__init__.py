"""fusion (placeholder; see issue)."""
