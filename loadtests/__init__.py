"""Load tests and benchmarks of the Roost host (``roost bench``)."""
