"""Local servers that follow each provider's documented API contract, for tests and benchmarks."""
