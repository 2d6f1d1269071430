"""Multi-detector inference service: image bytes in, calibrated primary + OODD scores out."""
