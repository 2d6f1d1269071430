"""Who may call edge-api: device tokens (verified by the cloud, cached; or listed locally), the edge
operator's token, and the internal token of the edge's own services."""
