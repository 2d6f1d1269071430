"""Code shared by edge, cloud and training: wire schemas, bundle format, model runtime, images, config."""
