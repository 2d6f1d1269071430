"""Escalations: written durably into the outbox (core/store.py), drained to the cloud by the sender."""
