"""The neuron's HTTP handlers, one module per group of routes; plumbing.py wraps them all."""
