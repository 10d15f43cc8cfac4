"""The OpenAI surface of the neuron: one module per endpoint, pure (bodies in, replies out)."""
