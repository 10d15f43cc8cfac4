"""`helexa up`: the single-host stack (one neuron, one cortex) and the files it writes."""
