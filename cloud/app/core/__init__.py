"""The cloud's logic as plain async functions over a database session; no HTTP types here."""
