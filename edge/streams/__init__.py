"""Stream ingest: reads the camera streams and file sources named under `streams:` in the edge config
and submits their frames to edge-api as image queries (docs/architecture.md §1)."""
