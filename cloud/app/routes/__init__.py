"""HTTP routes, one module per prefix; thin: parse, call core/, shape the answer."""
