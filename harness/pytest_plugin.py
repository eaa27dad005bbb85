"""pytest plugin of acked: fixtures for clusters and runs (filled in by the harness)."""
