"""mini-MIAS mammograms (Suckling et al. 1994) from the database's own ``Info.txt``.

Per film: ``severity`` (normal/benign/malignant; malignant if any lesion row is), ``tissue``
(F/G/D), ``abnormality`` (class of the first lesion row, NORM for normal films) and lesion boxes.
Info.txt gives lesion centres in the original 1024-pixel frame with the origin at the BOTTOM-left,
so row = 1024 - y, and everything is scaled to the stored image's real size. Consecutive films
(mdb001/mdb002, ...) are the left and right breast of one patient: they form one group.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np

from medmtl.data.readers._base import READERS, DirPath, Reader
from medmtl.data.records import FileSource, ReadResult, Record, Skipped, TargetInfo
from medmtl.errors import DataError

_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]{4})(.*)$")
ABNORMALITIES = ("ARCH", "ASYM", "CALC", "CIRC", "MISC", "NORM", "SPIC")
TISSUES = ("F", "G", "D")
SEVERITIES = ("normal", "benign", "malignant")
ORIGINAL_SIZE = 1024


def parse_info(path: Path) -> dict[str, list[dict]]:
    """Parse Info.txt into {film: [row, ...]}; a row's x/y/radius are None when absent (NOTE 3)."""
    films: dict[str, list[dict]] = {}
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        m = _ROW.match(line.strip())
        if not m:
            continue
        film, tissue, abn, rest = m.groups()
        if abn not in ABNORMALITIES:
            raise DataError(f"{path}:{lineno}: abnormality {abn!r} is not one of {list(ABNORMALITIES)}")
        fields = rest.split()
        severity = fields[0] if fields and fields[0] in ("B", "M") else None
        nums = [f for f in fields[1:] if re.fullmatch(r"-?\d+(\.\d+)?", f)]
        if abn != "NORM" and severity is None:
            raise DataError(f"{path}:{lineno}: abnormal film {film} has no severity B/M: {line.strip()!r}")
        xyr = tuple(float(v) for v in nums[:3]) if len(nums) >= 3 else (None, None, None)
        films.setdefault(film, []).append(
            {"tissue": tissue, "abnormality": abn, "severity": severity, "x": xyr[0], "y": xyr[1],
             "radius": xyr[2], "line": lineno}
        )
    if not films:
        raise DataError(f"{path}: no film rows found (expected lines like 'mdb001 G CIRC B 535 425 197')")
    return films


def lesion_box(x: float, y: float, r: float, width: int, height: int) -> np.ndarray:
    """Box of the circle (x, y, r) given in the 1024 bottom-left frame, in the stored image's pixels."""
    sx, sy = width / ORIGINAL_SIZE, height / ORIGINAL_SIZE
    cx, cy = x * sx, (ORIGINAL_SIZE - y) * sy
    box = np.array([cx - r * sx, cy - r * sy, cx + r * sx, cy + r * sy], dtype=np.float32)
    return np.clip(box, 0, [width, height, width, height]).astype(np.float32)


@READERS.register("mias", targets=("severity", "tissue", "abnormality", "box"))
class MIASReader(Reader):
    """mini-MIAS: targets ``severity``, ``tissue``, ``abnormality`` and ``box``.

    Args:
        root: the folder with ``Info.txt`` and ``mdbNNN.pgm``.
        info: the label table's file name.
    """

    name: Literal["mias"] = "mias"
    root: DirPath
    info: str = "Info.txt"

    def read(self) -> ReadResult:
        from PIL import Image

        info_path = self.root / self.info
        if not info_path.is_file():
            raise DataError(f"{self.root}: label table {self.info!r} not found")
        films = parse_info(info_path)
        records, skipped = [], []
        for film, rows in sorted(films.items()):
            path = self.root / f"{film}.pgm"
            if not path.is_file():
                skipped.append(Skipped(str(path), f"listed in {self.info} line {rows[0]['line']} but the file is missing"))
                continue
            try:
                with Image.open(path) as img:
                    width, height = img.size
            except Exception as exc:  # a corrupt header: counted and listed, the run goes on
                skipped.append(Skipped(str(path), f"unreadable image: {exc}"))
                continue
            records.append(self._record(film, path, rows, width, height))
        targets = {
            "severity": TargetInfo("multiclass", SEVERITIES),
            "tissue": TargetInfo("multiclass", TISSUES),
            "abnormality": TargetInfo("multiclass", ABNORMALITIES),
            "box": TargetInfo("detection"),
        }
        return ReadResult(records, targets, skipped)

    @staticmethod
    def _record(film, path, rows, width, height) -> Record:
        sev = {r["severity"] for r in rows}
        severity = "malignant" if "M" in sev else "benign" if "B" in sev else "normal"
        number = int(film[3:])
        pair = f"pair{(number + 1) // 2:03d}"  # films 2k-1 and 2k are one patient's breasts
        labels = {"severity": severity, "tissue": rows[0]["tissue"], "abnormality": rows[0]["abnormality"]}
        located = [r for r in rows if r["x"] is not None]
        boxes = None
        if severity == "normal":
            boxes = np.zeros((0, 4), np.float32)
        elif len(located) == len(rows):
            boxes = np.stack([lesion_box(r["x"], r["y"], r["radius"], width, height) for r in located])
        # An abnormal film without coordinates (NOTE 3) has no usable box: its box label stays missing.
        if boxes is not None:
            labels["box"] = True
        return Record(id=film, source=FileSource(path), group=pair, labels=labels, boxes=boxes)
