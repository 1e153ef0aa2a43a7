"""api-router: a streaming-first LLM API gateway.

The request path, top to bottom:

1. ``net/downstream.py`` reads client bytes (httptools) and builds a request head and body.
2. ``routing.py`` (pure) turns it into a ``Route`` and the upstream request head.
3. ``net/forward.py`` borrows an upstream connection from ``net/upstream.py`` and sends the request.
4. Each upstream read is written to the client at once; ``core/stream.py`` (pure) decides
   heartbeats, error events and whether the upstream connection may be reused.
5. Transport flow control carries backpressure both ways; a client that goes away closes
   its upstream connection at once.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
