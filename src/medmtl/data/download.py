"""Fetch official MedMNIST v2 / MedMNIST+ archives, resumably and checksum-verified.

URLs and md5 sums are those of Zenodo record 10519652, as listed in ``medmnist/info.py`` of the
``medmnist`` package (3.0.2). Set ``MEDMTL_MEDMNIST_URL`` to a mirror's base URL to fetch the same
file names from elsewhere.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from medmtl._registry import did_you_mean
from medmtl.data.records import file_digest
from medmtl.errors import DataError

ZENODO_BASE = "https://zenodo.org/records/10519652/files"
SIZES = (28, 64, 128, 224)
_MD5 = {  # one md5 per entry of SIZES, in that order
    "pathmnist": ("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
                  "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec"),
    "chestmnist": ("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
                   "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa"),
    "dermamnist": ("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
                   "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
    "octmnist": ("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
                 "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3"),
    "pneumoniamnist": ("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
                       "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1"),
    "retinamnist": ("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
                    "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
    "breastmnist": ("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
                    "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b"),
    "bloodmnist": ("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
                   "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601"),
    "tissuemnist": ("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
                    "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c"),
    # The Organ{A,C,S} 28-px sums changed from medmnist 2.x (record 6496656): these files were
    # regenerated, so the older sums would reject a correct download from this record.
    "organamnist": ("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
                    "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170"),
    "organcmnist": ("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
                    "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1"),
    "organsmnist": ("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
                    "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1"),
}


def file_name(flag: str, size: int = 28) -> str:
    """The archive's name on Zenodo: ``{flag}.npz`` at 28 px, ``{flag}_{size}.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


#: ``(flag, size) -> (official URL, md5)`` for every MedMNIST v2 2-D archive.
MEDMNIST_FILES: dict[tuple[str, int], tuple[str, str]] = {
    (flag, size): (f"{ZENODO_BASE}/{file_name(flag, size)}?download=1", md5)
    for flag, sums in _MD5.items() for size, md5 in zip(SIZES, sums)
}


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _lookup(flag: str, size: int) -> tuple[str, str]:
    if (flag, size) in MEDMNIST_FILES:
        url, md5 = MEDMNIST_FILES[flag, size]
        mirror = os.environ.get("MEDMTL_MEDMNIST_URL")
        return (f"{mirror.rstrip('/')}/{file_name(flag, size)}" if mirror else url), md5
    if flag in _MD5:
        raise DataError(f"MedMNIST {flag!r} has no {size}-px archive; sizes are {list(SIZES)}")
    raise DataError(f"unknown MedMNIST flag {flag!r}; known flags are {sorted(_MD5)}"
                    f"{did_you_mean(flag, _MD5)}")


def download_medmnist(flag: str, root: Path, size: int = 28, *, url: str | None = None,
                      md5: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Download one MedMNIST archive into ``root`` and verify its md5.

    Args:
        flag: MedMNIST flag, e.g. ``"retinamnist"``.
        root: Directory the archive is written to (created if missing).
        size: Image side in pixels: 28, 64, 128 or 224.
        url: Source URL; overrides the table and ``MEDMTL_MEDMNIST_URL``.
        md5: Expected md5 hex digest; overrides the table.
        progress: Show a tqdm progress bar.
        timeout: Socket timeout in seconds.

    Returns:
        Path of the verified archive, ``root/{flag}.npz`` or ``root/{flag}_{size}.npz``.

    Raises:
        DataError: The flag/size is unknown, the server cannot be reached, or the md5 differs.
    """
    if url is None or md5 is None:
        table_url, table_md5 = _lookup(flag, size)
        url, md5 = url or table_url, md5 or table_md5
    root = Path(root)
    final = root / file_name(flag, size)
    if final.is_file() and _md5(final) == md5:
        return final
    root.mkdir(parents=True, exist_ok=True)
    part = root / f"{final.name}.part"
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            # A server may ignore Range and send the whole file (200): appending would corrupt it.
            resumed = start > 0 and resp.status == 206
            length = resp.headers.get("Content-Length")
            done = start if resumed else 0
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                    total=done + int(length) if length else None, initial=done, unit="B",
                    unit_scale=True, desc=final.name, disable=not progress) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        # 416: the part file already holds every byte; the md5 check below decides if it is good.
        if not (exc.code == 416 and start):
            raise DataError(f"could not download MedMNIST {flag!r} from {url}: HTTP {exc.code}; "
                            f"set `path:` to a local {final.name} to work offline") from exc
    except OSError as exc:  # URLError, refused connections and timeouts are all OSError
        # The part file is kept on purpose so that the next attempt resumes from it.
        raise DataError(f"could not download MedMNIST {flag!r} from {url}: {exc}; "
                        f"set `path:` to a local {final.name} to work offline") from exc
    actual = _md5(part)
    if actual != md5:
        part.unlink()
        raise DataError(f"MedMNIST {flag!r} downloaded from {url} has md5 {actual}, "
                        f"expected {md5}; the partial file was deleted, retry the download")
    os.replace(part, final)
    return final
