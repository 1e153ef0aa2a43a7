"""The simulated LLM upstream (docs/mock-upstream.md): a package apart from the router.

It imports nothing of the router but ``errors``/``core`` (tests/test_layers.py), so it can be
run, tested and benchmarked against without the router's code in the way.

- ``shape.py``: the per-request shape a client asks for (the ``"mock"`` object), parsed and checked
- ``shapes.py``: the bodies and events each API answers with, for a shape
- ``server.py``: the HTTP/1.1 server that speaks them; ``python -m api_router.mock --port 0``
"""
