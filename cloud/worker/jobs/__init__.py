"""The worker's steps, one module each; plain async functions over a session factory."""
