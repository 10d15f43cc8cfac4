"""Fuzz every cortex route with 20,000 seeded hostile requests (issue 11): never a 5xx (but a
503 with Retry-After), always the route's envelope, nothing left reserved or in flight.

cortex runs on a real loopback port in front of a fake neuron; the requests go over four
kept-alive raw sockets, some hung up right after the status line.
"""

from __future__ import annotations

from rig.cortex_rig import CortexFactory
from rig.fake_neuron import FakeNeuron
from rig.fuzz_cortex import KEYS, fuzz_cortex


async def test_fuzz_every_cortex_route(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(token="node-secret") as fake:
        cortex = await start_cortex({"mock-node": fake}, entitlements=KEYS)
        await fuzz_cortex(cortex, "test-model", "mock-node", count=20000, seed=1111)
