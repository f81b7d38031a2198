"""FMA metadata: `fma_metadata/tracks.csv`, with FMA's two header rows."""
import csv
import re
from pathlib import Path

_FMA_NAME = re.compile(r"^(\d{6})$")
_COLUMNS = {("track", "title"): "title", ("artist", "name"): "artist", ("album", "title"): "album",
            ("track", "genre_top"): "genre"}


def fma_id(path) -> int | None:
    """FMA's track id where the file name is one (`000002.mp3` -> 2)."""
    m = _FMA_NAME.match(Path(path).stem)
    return int(m.group(1)) if m else None


def find_tracks_csv(root) -> Path | None:
    """`fma_metadata/tracks.csv` in `root` or the nearest folder above it that has one."""
    root = Path(root).resolve()
    for d in [root, *root.parents]:
        candidate = d / "fma_metadata" / "tracks.csv"
        if candidate.is_file():
            return candidate
    return None


class MetadataError(ValueError):
    """A file that is not an FMA tracks.csv."""


def read_tracks_csv(path) -> dict[int, dict[str, str | None]]:
    """track id -> {title, artist, album, genre} from an FMA tracks.csv."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            top, sub = next(rows, []), next(rows, [])
            cols = {}
            last = ""
            for i, (a, b) in enumerate(zip(top, sub)):
                last = a or last  # pandas writes a MultiIndex header with blanks carried from the left
                if (last, b) in _COLUMNS:
                    cols[_COLUMNS[(last, b)]] = i
            if not cols:
                raise MetadataError(f"{path}: not an FMA tracks.csv (its two header rows name none of "
                                    f"{', '.join('/'.join(c) for c in _COLUMNS)})")
            out = {}
            for row in rows:
                if not row or not row[0].isdigit():
                    continue  # the "track_id" index-name row
                out[int(row[0])] = {k: (row[i] or None) if i < len(row) else None for k, i in cols.items()}
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MetadataError(f"{path}: not a readable tracks.csv ({err.__class__.__name__}: {err})") from None
