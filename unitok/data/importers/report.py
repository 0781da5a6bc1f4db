"""Bad input is reported, never dropped silently.

Every importer routes each problem it finds through one ``Reporter``: by default the first problem
raises ``DataImportError`` naming the file and the item (annotation id, question id, line number);
with ``skip_bad=True`` the item is skipped, counted and listed in the ``ImportReport`` that the
importer returns and writes as ``import_report.json`` inside the store directory.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT_NAME = "import_report.json"


class DataImportError(ValueError):
    """Input an importer cannot turn into records: names the file, the item and what is wrong."""

    def __init__(self, file: str | os.PathLike, item: str, reason: str):
        self.file, self.item, self.reason = str(file), item, reason
        super().__init__(f"{self.file}: {item}: {reason}" if item else f"{self.file}: {reason}")


@dataclass(frozen=True)
class BadItem:
    file: str
    item: str  # e.g. "annotation 17", "line 4", "image 9 (0009.png)"
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.item}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did: records written, items skipped and why."""

    kind: str
    out: str
    records: int = 0
    bad: list[BadItem] = field(default_factory=list)
    reencoded_images: int = 0  # images stored as PNG because the source was not RGB PNG/JPEG

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "out": self.out, "records": self.records, "skipped": self.skipped,
                "reencoded_images": self.reencoded_images, "bad": [asdict(b) for b in self.bad]}

    def summary(self) -> str:
        lines = [f"imported {self.records} records into {self.out} ({self.kind}); skipped {self.skipped} bad items"]
        lines += [f"  {b}" for b in self.bad]
        return "\n".join(lines)

    def write(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path) if path is not None else Path(self.out) / REPORT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


class Reporter:
    """Collects bad items for one import: raises on the first one unless ``skip_bad``."""

    def __init__(self, report: ImportReport, skip_bad: bool):
        self.report = report
        self.skip_bad = skip_bad

    def bad(self, file: str | os.PathLike, item: str, reason: str) -> None:
        """Report one bad item; returns only when skipping, so callers ``continue`` after it."""
        if not self.skip_bad:
            raise DataImportError(file, item, reason)
        self.report.bad.append(BadItem(str(file), item, reason))
