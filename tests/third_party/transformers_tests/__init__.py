"""transformers' own model-test mixins, copied unchanged from its 5.25.0 sdist (see README.md)."""
