"""`index`: bring an index up to date with a music folder."""
import time
from dataclasses import dataclass, field
from pathlib import Path


from indexer.collection import find_audio
from indexer.index import Index
from indexer.metadata import find_tracks_csv, read_tracks_csv
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
    pruned: int = 0
    audio_hours: float = 0.0
    seconds: float = 0.0
    metadata: str | None = None
    stages: dict[str, float] = field(default_factory=dict)  # decode / encode / pool+write seconds

    @property
    def realtime(self) -> float:
        return self.audio_hours * 3600 / self.seconds if self.seconds else 0.0


def index_folder(root: Path, index_dir: Path, *, checkpoint: Path | None = None, metadata: Path | None = None,
                 prune: bool = False, device: str = "auto", workers: int | None = None,
                 progress: bool = True) -> IndexReport:
    """Index every audio file under `root` into `index_dir`, incrementally.

    Unchanged files (same size and mtime, or same content) are skipped, changed
    ones re-indexed, vanished ones reported (and removed with `prune`). Failed
    files are recorded with their reason and tried again only when they change.
    """
    t0 = time.perf_counter()
    index = Index.open(index_dir, checkpoint=checkpoint, create=True, device=pick_device(device))
    try:
        root = Path(root).resolve()
        paths = find_audio(root)
        known = index.catalog.known()
        todo, skipped, skipped_failed, recheck = [], 0, 0, []
        for p in paths:
            st = p.stat()
            k = known.get(str(p))
            if k and k[0] == st.st_size and k[1] == st.st_mtime:
                skipped += 1
                skipped_failed += k[2] == "failed"
            elif k and k[0] == st.st_size:
                recheck.append((p, st.st_mtime))
            else:
                todo.append(p)
        # same size, another mtime (a copy or a restore that did not keep times, a `touch`): hashing the file
        # costs a read, decoding and encoding it far more; the same content only has its mtime recorded
        touched = []
        with progress_bar(len(recheck), "checking", "file", progress and bool(recheck)) as checking:
            for p, mtime in recheck:
                k = known[str(p)]
                if k[3] and file_hash(p) == k[3]:
                    touched.append((str(p), mtime))
                    skipped += 1
                    skipped_failed += k[2] == "failed"
                else:
                    todo.append(p)
                checking.update()
        index.catalog.touch(touched)
        present = {str(p) for p in paths}
        inside = str(root) + "/" if root.is_dir() else str(root)
        vanished = sorted(p for p in known if (p.startswith(inside) or p == str(root)) and p not in present)
        report = IndexReport(str(index_dir), skipped=skipped, skipped_failed=skipped_failed, vanished=vanished)
        if prune and vanished:
            ids = [index.catalog.track_by_path(p)["id"] for p in vanished]
            report.pruned = index.catalog.remove(ids)
        csv_path = metadata or find_tracks_csv(root)
        meta = read_tracks_csv(csv_path) if csv_path else {}
        report.metadata = str(csv_path) if csv_path else None

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
    finally:
        index.close()
