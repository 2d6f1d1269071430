"""Edge logic free of HTTP: parameters, decision tree, records, config, clients."""
