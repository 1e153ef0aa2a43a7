"""A private CA and a certificate it issued, written to files: what TLS tests hand the router and
the mock upstream (``certFile``/``keyFile``, ``caFile``)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import trustme


class TlsFiles(NamedTuple):
    cert: Path  # the certificate chain
    key: Path
    ca: Path  # the CA's certificate, for a client's trust store
    authority: trustme.CA  # for ``configure_trust`` on an ssl context


def tls_files(directory: Path, *hosts: str) -> TlsFiles:
    """A certificate for ``hosts`` (127.0.0.1 if none), its key and its CA, under ``directory``."""
    ca = trustme.CA()
    cert = ca.issue_cert(*(hosts or ("127.0.0.1",)))
    files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem", ca)
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    cert.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files
