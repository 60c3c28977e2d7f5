"""How a process computes: device and precision, several processes under torchrun, signals, random state."""
