"""A client TLS context is made once for the same files and shared by every backend that
uses them (`tls.py::ClientTLS.context`); a changed or missing file is read again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from trio_gateway.config import ConfigError
from trio_gateway.tls import ClientTLS


def test_the_same_files_share_one_context(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    first = ClientTLS(str(bundle), setting="worker").context()
    assert ClientTLS(str(bundle), setting="worker").context() is first
    assert ClientTLS().context() is ClientTLS().context()  # the system store, loaded once
    stat = bundle.stat()
    os.utime(bundle, (stat.st_atime, stat.st_mtime + 10))  # the file changed
    assert ClientTLS(str(bundle), setting="worker").context() is not first


def test_a_missing_file_is_an_error_every_time(tmp_path: Path) -> None:
    gone = ClientTLS(str(tmp_path / "gone.pem"), setting="upstream")
    for _ in range(2):
        with pytest.raises(ConfigError, match="upstream_ca_bundle"):
            gone.context()
