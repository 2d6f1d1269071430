"""The model updater: keeps each configured detector's bundle in step with the cloud's production version."""
