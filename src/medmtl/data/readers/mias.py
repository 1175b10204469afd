"""mini-MIAS mammograms (Suckling et al. 1994) from the database's own ``Info.txt``.

Per film: ``severity`` (normal/benign/malignant; malignant if any lesion row is), ``malignant``
(no/yes: the same severity collapsed to "malignant vs not", normal and benign films being "no"), ``tissue``
(F/G/D), ``abnormality`` (class of the first lesion row, NORM for normal films) and lesion boxes.
With ``crop: lesion`` the records are lesions instead: one square region around each lesion
circle that has coordinates, labelled from its own row (mdb144 gives one benign and one malignant).
Info.txt gives lesion centres in the original 1024-pixel frame with the origin at the BOTTOM-left,
so row = 1024 - y, and everything is scaled to the stored image's real size. Consecutive films
(mdb001/mdb002, ...) are the left and right breast of one patient: they form one group.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from medmtl.data.readers._base import READERS, DirPath, Reader
from medmtl.data.records import FileSource, ReadResult, Record, Skipped, TargetInfo
from medmtl.errors import DataError

_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]{4})(.*)$")
ABNORMALITIES = ("ARCH", "ASYM", "CALC", "CIRC", "MISC", "NORM", "SPIC")
TISSUES = ("F", "G", "D")
SEVERITIES = ("normal", "benign", "malignant")
MALIGNANT = ("no", "yes")   # "yes" second: a binary task's positive class is index 1
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


def to_pixels(x: float, y: float, width: int, height: int) -> tuple[float, float, float, float]:
    """(cx, cy, sx, sy): the point (x, y) of the 1024 bottom-left frame in the stored image's pixels
    (row = 1024 - y, then scaled) and the frame's scale per axis."""
    sx, sy = width / ORIGINAL_SIZE, height / ORIGINAL_SIZE
    return x * sx, (ORIGINAL_SIZE - y) * sy, sx, sy


def lesion_box(x: float, y: float, r: float, width: int, height: int) -> np.ndarray:
    """Box of the circle (x, y, r) given in the 1024 bottom-left frame, in the stored image's pixels."""
    cx, cy, sx, sy = to_pixels(x, y, width, height)
    box = np.array([cx - r * sx, cy - r * sy, cx + r * sx, cy + r * sy], dtype=np.float32)
    return np.clip(box, 0, [width, height, width, height]).astype(np.float32)


def lesion_crop(x: float, y: float, r: float, width: int, height: int, margin: float,
                min_size: int) -> tuple[int, int, int, int]:
    """Square integer region (x0, y0, x1, y1) centred on the circle (x, y, r) of the 1024 bottom-left
    frame, in the stored image's pixels: side ``2 r (1 + margin)`` scaled, at least ``min_size``.

    It is not clipped: :class:`FileSource` zero-pads what lies past the border, so the lesion
    stays in the centre (resizing a clipped, non-square region would also distort it).
    """
    cx, cy, sx, sy = to_pixels(x, y, width, height)
    side = max(int(min_size), int(round(2 * r * (1 + margin) * max(sx, sy))))
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    return left, top, left + side, top + side


@READERS.register("mias", targets=("severity", "malignant", "tissue", "abnormality", "box"))
class MIASReader(Reader):
    """mini-MIAS: targets ``severity``, ``malignant`` (no/yes), ``tissue``, ``abnormality`` and ``box``.

    Args:
        root: the folder with ``Info.txt`` and ``mdbNNN.pgm``.
        info: the label table's file name.
        crop: ``film`` (one record per film) or ``lesion``: one record per lesion row with
            coordinates, the square region around its circle (ids ``mdbNNN/lineL``, grouped by
            film pair; severity benign/malignant of that row; no ``box`` target). Lesion rows
            without coordinates (NOTE 3) are skipped and listed; normal films give no record.
        margin: lesion crops: side = circle diameter x (1 + margin).
        min_size: lesion crops: smallest side in stored-image pixels (small calcification
            circles would otherwise give a few pixels of context).
    """

    name: Literal["mias"] = "mias"
    root: DirPath
    info: str = "Info.txt"
    crop: Literal["film", "lesion"] = "film"
    margin: float = Field(0.5, ge=0.0)
    min_size: int = Field(32, ge=4)

    def read(self) -> ReadResult:
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
            if self.crop == "lesion":
                records += self._lesions(film, path, rows, width, height, skipped)
            else:
                records.append(self._record(film, path, rows, width, height))
        if self.crop == "lesion":
            targets = {"severity": TargetInfo("multiclass", SEVERITIES[1:]),
                       "malignant": TargetInfo("binary", MALIGNANT), "tissue": TargetInfo("multiclass", TISSUES),
                       "abnormality": TargetInfo("multiclass", ABNORMALITIES)}
            return ReadResult(records, targets, skipped)
        targets = {
            "severity": TargetInfo("multiclass", SEVERITIES),
            "malignant": TargetInfo("binary", MALIGNANT),
            "tissue": TargetInfo("multiclass", TISSUES),
            "abnormality": TargetInfo("multiclass", ABNORMALITIES),
            "box": TargetInfo("detection"),
        }
        return ReadResult(records, targets, skipped)

    def _lesions(self, film, path, rows, width, height, skipped: list) -> list[Record]:
        """One cropped record per lesion row with coordinates; the others go to ``skipped``."""
        out = []
        for r in rows:
            where = f"{self.info} line {r['line']}"
            if r["abnormality"] == "NORM":
                continue  # a normal film has no lesion: nothing to crop, nothing left out
            if r["x"] is None:
                skipped.append(Skipped(str(path), f"{where}: lesion without coordinates (NOTE 3), cannot be cropped"))
                continue
            box = lesion_crop(r["x"], r["y"], r["radius"], width, height, self.margin, self.min_size)
            malignant = r["severity"] == "M"
            labels = {"severity": "malignant" if malignant else "benign", "malignant": "yes" if malignant else "no",
                      "tissue": r["tissue"], "abnormality": r["abnormality"]}
            out.append(Record(id=f"{film}/line{r['line']}", source=FileSource(path, crop=box), group=_pair(film),
                              labels=labels))
        return out

    @staticmethod
    def _record(film, path, rows, width, height) -> Record:
        sev = {r["severity"] for r in rows}
        severity = "malignant" if "M" in sev else "benign" if "B" in sev else "normal"
        pair = _pair(film)
        labels = {"severity": severity, "malignant": "yes" if severity == "malignant" else "no",
                  "tissue": rows[0]["tissue"], "abnormality": rows[0]["abnormality"]}
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


def _pair(film: str) -> str:
    """Films 2k-1 and 2k are one patient's left and right breasts: one group."""
    return f"pair{(int(film[3:]) + 1) // 2:03d}"
