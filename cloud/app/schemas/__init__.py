"""Request and response models that only the cloud uses (shared wire models live in common/wire/)."""
