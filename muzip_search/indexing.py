"""`index`: bring an index up to date with a music folder."""
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path


from indexer.collection import find_audio
from indexer.index import Index, writing
from indexer.metadata import MetadataError, find_tracks_csv, fma_id, read_tracks_csv
from indexer.pipeline import file_hash, run

from .device import pick_device
from .progress import bar as progress_bar
from .progress import faiss_bar as progress_faiss


@dataclass
class IndexReport:
    index: str
    indexed: int = 0
    skipped: int = 0
    skipped_failed: int = 0                                 # of the skipped, files that failed before
    failed: dict[str, str] = field(default_factory=dict)   # path -> reason
    vanished: list[str] = field(default_factory=list)
    moved: list[tuple[str, str, float]] = field(default_factory=list)  # (old path, new path, mtime): same content
    touched: list[tuple[str, float]] = field(default_factory=list)     # (path, new mtime): same content
    pruned: int = 0
    audio_hours: float = 0.0
    seconds: float = 0.0
    metadata: str | None = None
    metadata_error: str | None = None                       # a tracks.csv found but not read: why
    stages: dict[str, float] = field(default_factory=dict)  # decode / encode / pool+write seconds

    @property
    def realtime(self) -> float:
        return self.audio_hours * 3600 / self.seconds if self.seconds else 0.0


def _plan(root: Path, paths: list[Path], known: dict[str, tuple], index: str, progress: bool
          ) -> tuple[list[Path], IndexReport]:
    """The files under `root` to index, and a report of the rest: unchanged, touched, moved and vanished.

    Unchanged: the same size and mtime. A file of the same size with a new mtime (a copy or a restore that did
    not keep times, a `touch`), or a new path of the size of a vanished file (a file moved or renamed), is
    hashed: hashing costs a read, decoding and encoding far more, so the same content is only recorded where
    it is now (`known`: path -> (size, mtime, status, hash), as `Catalog.known`).
    """
    present = {str(p) for p in paths}
    inside = str(root) + "/" if root.is_dir() else str(root)
    gone = {p: k for p, k in known.items() if (p.startswith(inside) or p == str(root)) and p not in present}
    was = {(k[0], k[3]): p for p, k in gone.items() if k[3]}  # (size, hash) -> vanished path
    sizes = {size for size, _ in was}
    report = IndexReport(index)
    todo, check = [], []
    for p in paths:
        st = p.stat()
        k = known.get(str(p))
        if k and (k[0], k[1]) == (st.st_size, st.st_mtime):
            report.skipped += 1
            report.skipped_failed += k[2] == "failed"
        elif (k and k[0] == st.st_size) or (not k and st.st_size in sizes):
            check.append((p, st.st_size, st.st_mtime))
        else:
            todo.append(p)
    with progress_bar(len(check), "checking", "file", progress and bool(check)) as checking:
        for p, size, mtime in check:
            k, digest = known.get(str(p)), file_hash(p)
            if k and k[3] == digest:
                report.touched.append((str(p), mtime))
                report.skipped += 1
                report.skipped_failed += k[2] == "failed"
            elif not k and (size, digest) in was and fma_id(Path(was[size, digest])) == fma_id(p):
                # (a track's id is FMA's where the file's name is one: a rename to another id is a new track)
                report.moved.append((was.pop((size, digest)), str(p), mtime))
            else:
                todo.append(p)
            checking.update()
    moved = {old for old, _, _ in report.moved}
    report.vanished = sorted(p for p in gone if p not in moved)
    todo = set(todo)
    return [p for p in paths if p in todo], report  # in the folder's order, as new tracks' ids are given


def index_folder(root: Path, index_dir: Path, *, checkpoint: Path | None = None, metadata: Path | None = None,
                 prune: bool = False, device: str = "auto", workers: int | None = None,
                 progress: bool = True) -> IndexReport:
    """Index every audio file under `root` into `index_dir`, incrementally.

    Unchanged files (same size and mtime, or same content) are skipped, moved
    ones (a vanished file's content at a new path) keep their tracks, changed
    ones are re-indexed, vanished ones reported (and removed with `prune`).
    Failed files are recorded with their reason and tried again only when they
    change.
    """
    t0 = time.perf_counter()
    with writing(index_dir), closing(Index.open(index_dir, checkpoint=checkpoint, create=True,
                                                device=pick_device(device))) as index:
        root = Path(root).resolve()
        paths = find_audio(root)
        todo, report = _plan(root, paths, index.catalog.known(), str(index_dir), progress)
        index.catalog.move(report.moved + [(p, p, mtime) for p, mtime in report.touched])
        if prune and report.vanished:
            ids = [index.catalog.track_by_path(p)["id"] for p in report.vanished]
            report.pruned = index.catalog.remove(ids)
        csv_path = metadata or find_tracks_csv(root)
        try:
            meta = read_tracks_csv(csv_path) if csv_path else {}
            report.metadata = str(csv_path) if csv_path else None
        except MetadataError as err:
            if metadata:  # named on the command line: an error
                raise
            meta, report.metadata_error = {}, str(err)  # found beside the folder: indexed without it, said so

        bar = progress_bar(len(todo), "index", "file", progress)
        audio, failed, t_run = [0.0], [0], time.perf_counter()

        def on_file(d, rec):
            audio[0] += rec.seconds or 0.0
            bar.update()
            failed[0] += rec.status == "failed"
            elapsed = max(time.perf_counter() - t_run, 1e-9)
            # refresh=False: shown with the bar's own updates (every 5 s in a log), not a line per file
            bar.set_postfix_str(f"{audio[0] / 3600 / elapsed:.3f} audio-h/s ({audio[0] / elapsed:.0f}x real time), "
                                f"{failed[0]} failed", refresh=False)

        with bar:  # closed before an interruption's message
            summary = run(index.catalog, index.model, todo, index.vectors, metadata=meta, workers=workers,
                          on_file=on_file)
        report.indexed = summary.indexed
        report.failed = summary.failed
        report.audio_hours = summary.audio_seconds / 3600
        report.stages = {"decode_cpu_s": round(summary.decode_s, 2), "encode_s": round(summary.encode_s, 2),
                         "pool_write_s": round(summary.write_s, 2)}
        if not index.faiss_saved():  # a run that changed nothing leaves them as they are (fma_full's: 8.5 GB)
            faiss_bar, on_progress = progress_faiss(index.catalog.window_count(), progress)
            index.save_faiss(on_progress)
            faiss_bar.close()
        report.seconds = time.perf_counter() - t0
        return report
