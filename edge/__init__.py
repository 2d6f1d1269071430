"""The edge box: gateway-facing API, inference, model updater and stream ingest."""
