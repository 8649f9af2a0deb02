"""Downloader for MovieLens-100K with SHA-256 verification (for users with internet)."""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from pathlib import Path

from ..errors import ChecksumError, DataError

# Checksums of the extracted files (GroupLens' ml-100k.zip).
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "8677fe7565ea60a10918eb4b297da546e41c49e33b0e858aade4a05260a9fd34",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
}


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_ml100k(folder: str | Path) -> None:
    """Raise ChecksumError unless every ML-100K file in ``folder`` has its published hash."""
    folder = Path(folder)
    for name, expected in ML100K_SHA256.items():
        p = folder / name
        if not p.exists():
            raise ChecksumError(f"{p} is missing; re-download with `fsrec data download ml-100k`")
        got = sha256_of(p)
        if got != expected:
            raise ChecksumError(
                f"{p} has SHA-256 {got}, expected {expected}: the file is corrupt or another "
                "version; delete the folder and download again"
            )


def extract_ml100k_zip(blob: bytes, data_dir: str | Path) -> Path:
    """Extract ml-100k.zip bytes into ``data_dir/ml-100k`` and verify the checksums."""
    target = Path(data_dir) / "ml-100k"
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for info in z.infolist():
            name = Path(info.filename).name
            if name and not info.is_dir() and Path(info.filename).parent.name == "ml-100k":
                (target / name).write_bytes(z.read(info))
    verify_ml100k(target)
    return target


def download_ml100k(data_dir: str | Path, url: str = ML100K_URL, timeout: float = 60.0) -> Path:
    """Download GroupLens' ml-100k.zip into ``data_dir/ml-100k`` and verify its checksums."""
    target = Path(data_dir) / "ml-100k"
    if target.exists():
        try:
            verify_ml100k(target)
            return target  # already there and intact
        except ChecksumError:
            pass
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            blob = r.read()
    except OSError as e:
        raise DataError(
            f"could not download {url} ({e}); download it by hand and unzip it into {data_dir}, "
            "or point FSREC_DATA_DIR at a folder that holds ml-100k/"
        ) from None
    return extract_ml100k_zip(blob, data_dir)
