"""Pydantic models for everything that crosses a process boundary."""
