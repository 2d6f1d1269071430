"""Edge API: the Groundlight device API on the edge, the decision tree and the escalation outbox."""
