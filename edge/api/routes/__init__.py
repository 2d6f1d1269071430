"""One module per route group; each owns its prefix and tags."""
