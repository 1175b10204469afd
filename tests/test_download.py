"""download_medmnist against a real local HTTP server (no mocks of urllib)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from medmtl.data.download import MEDMNIST_FILES, download_medmnist
from medmtl.errors import DataError

FLAG = "retinamnist"


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; honours ``Range: bytes=N-`` unless the server's ``honour_range`` is off."""

    def do_GET(self):  # noqa: N802 - http.server naming
        self.server.requests.append((self.path, dict(self.headers)))
        spec = self.headers.get("Range")
        if not (spec and self.server.honour_range):
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        start = int(spec.removeprefix("bytes=").rstrip("-"))
        if start >= len(data):
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        return None

    def log_message(self, *args):
        pass


@pytest.fixture
def payload(tmp_path):
    """A small npz with MedMNIST's keys, written to a served directory."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    path = served / f"{FLAG}.npz"
    np.savez_compressed(path, train_images=rng.integers(0, 255, (64, 28, 28, 3), dtype=np.uint8),
                        train_labels=rng.integers(0, 5, (64, 1)))
    data = path.read_bytes()
    return served, data, hashlib.md5(data).hexdigest()


@pytest.fixture
def server(payload):
    served = payload[0]
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(served)))
    httpd.requests = []
    httpd.honour_range = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _get(server, payload, root, progress=False):
    return download_medmnist(FLAG, root, url=f"{server.base}/{FLAG}.npz?download=1",
                             md5=payload[2], progress=progress, timeout=10)


def test_fresh_download(server, payload, tmp_path):
    root = tmp_path / "data"
    out = _get(server, payload, root, progress=True)
    assert out == root / f"{FLAG}.npz"
    assert hashlib.md5(out.read_bytes()).hexdigest() == payload[2]
    assert not list(root.glob("*.part"))
    with np.load(out) as z:
        assert z["train_images"].shape == (64, 28, 28, 3)
    assert len(server.requests) == 1 and "Range" not in server.requests[0][1]


def test_resume_sends_range_and_appends(server, payload, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    data = payload[1]
    half = len(data) // 2
    (root / f"{FLAG}.npz.part").write_bytes(data[:half])
    out = _get(server, payload, root)
    assert server.requests[-1][1]["Range"] == f"bytes={half}-"
    assert out.read_bytes() == data
    assert not (root / f"{FLAG}.npz.part").exists()


def test_server_ignoring_range_restarts(server, payload, tmp_path):
    server.honour_range = False
    root = tmp_path / "data"
    root.mkdir()
    data = payload[1]
    # Stale garbage that would corrupt the file if the 200 body were appended to it.
    (root / f"{FLAG}.npz.part").write_bytes(b"x" * (len(data) // 3))
    out = _get(server, payload, root)
    assert "Range" in server.requests[-1][1]
    assert out.read_bytes() == data


def test_complete_part_file_answered_416_is_accepted(server, payload, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / f"{FLAG}.npz.part").write_bytes(payload[1])
    out = _get(server, payload, root)
    assert out.read_bytes() == payload[1]


def test_md5_mismatch_raises_and_cleans_up(server, payload, tmp_path):
    root = tmp_path / "data"
    url = f"{server.base}/{FLAG}.npz"
    with pytest.raises(DataError, match=rf"{FLAG}.*{url}.*md5 {payload[2]}, expected 0{{32}}"):
        download_medmnist(FLAG, root, url=url, md5="0" * 32, progress=False)
    assert not (root / f"{FLAG}.npz").exists()
    assert not (root / f"{FLAG}.npz.part").exists()


def test_present_file_with_right_md5_makes_no_request(server, payload, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / f"{FLAG}.npz").write_bytes(payload[1])
    assert _get(server, payload, root) == root / f"{FLAG}.npz"
    assert len(server.requests) == 0


def test_present_file_with_wrong_md5_is_replaced(server, payload, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / f"{FLAG}.npz").write_bytes(b"truncated")
    out = _get(server, payload, root)
    assert out.read_bytes() == payload[1]
    assert len(server.requests) == 1


def test_unknown_flag_suggests_close_match(tmp_path):
    hint = r"unknown MedMNIST flag 'retinamnst'; known flags are \[.*did you mean 'retinamnist'"
    with pytest.raises(DataError, match=hint):
        download_medmnist("retinamnst", tmp_path)


def test_unknown_size_lists_sizes(tmp_path):
    with pytest.raises(DataError, match=r"no 32-px archive; sizes are \[28, 64, 128, 224\]"):
        download_medmnist(FLAG, tmp_path, size=32)


def test_connection_refused_names_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{FLAG}.npz"
    with pytest.raises(DataError, match=rf"from {url}: .*`path:`.*offline"):
        download_medmnist(FLAG, tmp_path, url=url, md5="0" * 32, progress=False, timeout=5)
    assert not (tmp_path / f"{FLAG}.npz").exists()


def test_http_404_names_url(server, tmp_path):
    url = f"{server.base}/missing.npz"
    with pytest.raises(DataError, match=rf"from {url}: HTTP 404"):
        download_medmnist(FLAG, tmp_path / "data", url=url, md5="0" * 32, progress=False)


@pytest.mark.parametrize("size", [28, 64])
def test_mirror_env_replaces_zenodo_base(server, payload, tmp_path, monkeypatch, size):
    served, data, md5 = payload
    name = f"{FLAG}.npz" if size == 28 else f"{FLAG}_{size}.npz"
    (served / name).write_bytes(data)
    monkeypatch.setenv("MEDMTL_MEDMNIST_URL", server.base + "/")
    out = download_medmnist(FLAG, tmp_path / "data", size, md5=md5, progress=False)
    assert out.name == name and out.read_bytes() == data
    assert server.requests[-1][0] == f"/{name}"


def test_table_urls_point_at_zenodo_record():
    assert MEDMNIST_FILES["breastmnist", 28][0] == (
        "https://zenodo.org/records/10519652/files/breastmnist.npz?download=1")
    assert MEDMNIST_FILES["pathmnist", 224][0].endswith("/pathmnist_224.npz?download=1")
    assert len(MEDMNIST_FILES) == 12 * 4
    assert all(len(md5) == 32 for _, md5 in MEDMNIST_FILES.values())


def test_retinamnist_md5_matches_official_and_shared_copy():
    expected = "bd4c0672f1bba3e3a89f0e4e876791e4"
    assert MEDMNIST_FILES["retinamnist", 28][1] == expected
    data_root = Path(os.environ.get("MEDMTL_DATA", "../shared/datasets"))
    shared = data_root / "medmnist" / "retinamnist.npz"
    if not shared.is_absolute():
        shared = Path(__file__).resolve().parents[1] / shared
    if not shared.is_file():
        pytest.skip(f"no shared copy of retinamnist.npz at {shared}; set MEDMTL_DATA to check it")
    assert hashlib.md5(shared.read_bytes()).hexdigest() == expected
