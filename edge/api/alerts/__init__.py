"""Alert rules on the edge (docs/architecture.md §12): the watcher that turns confident answers into
durable firings, and the sender that delivers them to the cloud."""
