"""What loadgen starts and stops: the built-in simulated server and the vLLM launcher."""
