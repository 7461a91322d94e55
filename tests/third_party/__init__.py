"""Test code vendored from the libraries Raptors plug into (see each package's README.md)."""
