"""helexa-acp: the Agent Client Protocol bridge that gives an editor a coding agent on the fleet.

A room of its own: it talks to cortex (or any OpenAI/Anthropic endpoint) over HTTP only and
never imports cortex or neuron.
"""
