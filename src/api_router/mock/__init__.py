"""The simulated LLM upstream (docs/mock-upstream.md): a package apart from the router.

It imports nothing of the router but ``errors``/``core`` (tests/test_layers.py), so it can be
run, tested and benchmarked against without the router's code in the way.

- ``shape.py``: the per-request shape a client asks for (the ``"mock"`` object), parsed and checked
- ``shapes.py``: the bodies and events each API answers with, for a shape (``responses.py``: the
  Responses API's); ``answers.py``: the fixed answers (models, files, count_tokens)
- ``stats.py``: what the mock records (``/_stats``); ``multipart.py``: the audio routes' upload reader
- ``connection.py``: one connection's HTTP/1.1 (parsing, in-order answers, backpressure)
- ``handler.py``: what a connection answers each request with, and the pacing of its streams
- ``server.py``: the listening server and its process; ``python -m api_router.mock --port 0``
"""
