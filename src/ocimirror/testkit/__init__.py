"""Local registries and sample images for tests, the demo and benchmarks."""
