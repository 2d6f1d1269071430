"""Cloud API and review UI (:8000): device API, escalations, review queue, registry, users."""
