"""An index directory: the catalog, the model it was built with, and derived FAISS files.

    INDEX/catalog.db          SQLite, the source of truth
    INDEX/model.pt            the codec checkpoint every latent in it came from
    INDEX/manifest.json       format, model checksum, rate, window/hop, vector size, metric
    INDEX/windows-G.faiss     window vectors at catalog generation G (rebuilt when stale)
    INDEX/tracks-G.faiss      whole-track vectors at generation G
    INDEX/mean-G.f32          the mean window and whole-track vectors the FAISS vectors are centred on
"""
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import Codec, load_codec, model_checksum, shipped_checkpoint

from .catalog import Catalog
from .vectors import (FrameGrid, VectorConfig, build_faiss, centre, for_search, index_kind, ivf_lists, new_faiss,
                      split_id, track_vector_dim, training_rows, window_id)

FORMAT_VERSION = 2  # 2: window vectors from the codec's pooling head
DEFAULT_INDEX = Path("muzip-index")


class IndexOpenError(Exception):
    """An index that cannot be opened as asked (missing, other model, other format, being indexed already)."""


@contextmanager
def writing(root: Path):
    """Hold the index at `root` for one indexing run: a second run beside it would repeat all its work (the
    catalog stays right either way). The lock is the kernel's (flock), so a run killed at any moment frees it."""
    import fcntl
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "index.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            raise IndexOpenError(f"another index run{f' (pid {pid})' if pid else ''} is writing to {root}; "
                                 f"wait for it to finish, or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield  # closing the file frees the lock


def default_index_dir() -> Path:
    return Path(os.environ.get("MUZIP_INDEX", DEFAULT_INDEX))


@dataclass
class Searchable:
    """FAISS indexes over the catalog's vectors at one generation."""
    generation: int
    windows: object
    tracks: object
    mean: np.ndarray        # the mean window vector the FAISS windows were centred with
    track_mean: np.ndarray  # the mean whole-track vector the FAISS tracks were centred with


class Index:
    def __init__(self, root: Path, catalog: Catalog, model: Codec, vectors: VectorConfig, manifest: dict):
        self.root, self.catalog, self.model, self.vectors, self.manifest = root, catalog, model, vectors, manifest
        self.grid = FrameGrid.of(model.cfg)
        self._searchable: Searchable | None = None

    # --- opening ----------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, *, checkpoint: Path | None = None, create: bool = False,
             device: str | torch.device = "cpu", readonly: bool = False) -> "Index":
        """Open (or with `create`, make) the index at `root`.

        A new index copies `checkpoint` (default: the shipped default model) inside
        itself. An existing one uses its own copy, and refuses a `checkpoint` that
        is a different model.
        """
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            if not create:
                raise IndexOpenError(f"no index at {root}; build one with: muzip-search index DIR --index {root}")
            return cls._create(root, checkpoint or shipped_checkpoint("default"), device)
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexOpenError(f"{root} is an index of format {manifest.get('format_version')}; this muzip-search "
                              f"reads format {FORMAT_VERSION}: re-index into a new --index folder")
        model = load_codec(root / "model.pt", device)
        if model_checksum(model) != manifest["model_checksum"]:
            raise IndexOpenError(f"{root}/model.pt does not match the index manifest: the index is damaged")
        if checkpoint is not None:
            other = load_codec(checkpoint)
            if model_checksum(other) != manifest["model_checksum"]:
                raise IndexOpenError(
                    f"{root} was built with model {manifest['model_name']} "
                    f"(sha256 {manifest['model_checksum'][:12]}), not {checkpoint} "
                    f"({other.cfg.name}, sha256 {model_checksum(other)[:12]}); use another --index "
                    f"for this model, or leave out --checkpoint to use the index's own")
        vectors = VectorConfig.from_dict(manifest["vectors"])
        return cls(root, Catalog(root / "catalog.db", readonly=readonly), model, vectors, manifest)

    @classmethod
    def _create(cls, root: Path, checkpoint: Path, device) -> "Index":
        model = load_codec(checkpoint, device)
        if model.head is None:
            raise IndexOpenError(f"{checkpoint}: codec {model.cfg.name!r} has no pooling head, so it cannot make "
                                 f"search vectors; index with one that has (the default, or train one)")
        root.mkdir(parents=True, exist_ok=True)
        vectors = VectorConfig()
        grid = FrameGrid.of(model.cfg)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_name": model.cfg.name,
            "model_checksum": model_checksum(model),
            "sample_rate": model.cfg.sample_rate,
            "chunk": model.cfg.chunk,
            "frame_rate": grid.rate,
            "window_s": vectors.window_s,
            "hop_s": vectors.hop_s,
            "vector_dim": model.cfg.head[1],
            "track_vector_dim": track_vector_dim(model.cfg.head[1], model.cfg.latent_dim, vectors),
            "metric": vectors.metric,
            "kbps": round(model.cfg.kbps, 2),
            "vectors": vectors.to_dict(),
        }
        shutil.copyfile(checkpoint, root / "model.pt.tmp")
        os.replace(root / "model.pt.tmp", root / "model.pt")
        catalog = Catalog(root / "catalog.db")
        catalog.set_meta("manifest", json.dumps(manifest))
        tmp = root / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, root / "manifest.json")  # written last: its presence means the index is whole
        return cls(root, catalog, model, vectors, manifest)

    # --- FAISS, derived from the catalog ------------------------------------------
    def searchable(self) -> Searchable:
        """FAISS indexes for the catalog as it is now: loaded if saved for this generation, else rebuilt."""
        import faiss
        gen = self.catalog.generation
        if self._searchable is not None and self._searchable.generation == gen:
            return self._searchable
        wpath, tpath, mpath = self._derived_files(gen)
        if self.faiss_saved(gen):
            windows, tracks = faiss.read_index(str(wpath)), faiss.read_index(str(tpath))
            means = np.frombuffer(mpath.read_bytes(), dtype=np.float32)
        else:
            gen, windows, tracks, means = self._build()
        d = self.manifest["vector_dim"]
        self._searchable = Searchable(gen, for_search(windows), for_search(tracks), means[:d], means[d:])
        return self._searchable

    def _build(self, batch: int = 65536, on_progress=None):
        """(generation, window index, track index, their means) from one consistent read of the catalog.

        When the newest FAISS files on disk still suit the collection's size, the
        tracks changed since they were written are removed from their window index
        and added again (centred on the mean those files were built with): adding
        a file to a big collection, or a query while `index` runs, costs what
        changed, not a new index. Otherwise the window vectors are read twice,
        `batch` at a time (the first pass takes their mean and the approximate
        index's training sample, the second adds them), so memory holds the FAISS
        index, never every vector as float32: fma_large's 106,574 clips make
        12.8 M windows, 6.5 GB of them. `on_progress(stage, windows held)` hears
        of each step.
        """
        report = on_progress or (lambda stage, added: None)
        d, d2 = self.manifest["vector_dim"], self.manifest["track_vector_dim"]
        with self.catalog.snapshot():
            gen, n = self.catalog.generation, self.catalog.window_count()
            windows, mean = self._updated(gen, n, batch, report) or self._built(n, batch, report)
            whole, tid = self.catalog.track_vectors()
        all_tracks = whole if whole is not None else np.zeros((0, d2), np.float32)
        track_mean = all_tracks.mean(axis=0) if len(all_tracks) else np.zeros(d2, np.float32)
        tracks = build_faiss(centre(all_tracks, track_mean), tid, self.vectors)
        return gen, windows, tracks, np.concatenate([mean, track_mean]).astype(np.float32)

    def _built(self, n: int, batch: int, report):
        """A new window index of the catalog's `n` windows, and the mean they are centred on."""
        d = self.manifest["vector_dim"]
        rows = training_rows(n, self.vectors)
        total, seen, sample = np.zeros(d), 0, [np.zeros((0, d), np.float16)]
        for _, w, _ in self.catalog.all_vectors():
            total += w.sum(axis=0, dtype=np.float64)
            lo, hi = np.searchsorted(rows, [seen, seen + len(w)])
            sample.append(w[rows[lo:hi] - seen])
            seen += len(w)
        mean = (total / max(n, 1)).astype(np.float32)
        report("training" if len(rows) else "adding", 0)
        windows = new_faiss(d, n, self.vectors, centre(np.concatenate(sample), mean))
        del sample
        for v, ids in _batches(self.catalog.all_vectors(), batch):
            windows.add_with_ids(centre(v, mean), ids)
            report("adding", windows.ntotal)
        return windows, mean

    def _updated(self, now: int, n: int, batch: int, report):
        """The newest saved window index (of generation `now` at most) brought up to date, and its mean.

        None where a new one is due: no files, changes not recorded since them, an
        exact index (rebuilt whole: cheap at its size, and centred on the collection's
        own mean), or another kind of index or lists for a quarter or 4 times the size.
        """
        import faiss
        saved = [(int(p.stem.split("-")[1]), p) for p in self.root.glob("windows-*.faiss")]
        for gen, wpath in sorted(saved, reverse=True):
            mpath = self._derived_files(gen)[2]
            if gen <= now and mpath.is_file():  # (a writer may have saved a generation this read does not see)
                break
        else:
            return None
        changed = self.catalog.changed_since(gen)
        if changed is None:
            return None
        try:
            windows = faiss.read_index(str(wpath))
            mean = np.frombuffer(mpath.read_bytes(), dtype=np.float32)[:self.manifest["vector_dim"]].copy()
        except (RuntimeError, OSError):  # replaced by a newer generation's meanwhile
            return None
        if not _suits(windows, n, self.vectors):
            return None
        if hasattr(windows, "nprobe"):
            windows.nprobe = self.vectors.ivf_nprobe
        held = _held_ids(windows)
        gone = held[np.isin(split_id(held)[0], np.fromiter(changed, np.int64, len(changed)))]
        if len(gone):
            windows.remove_ids(faiss.IDSelectorBatch(gone))  # one pass over the index, however many tracks
        report("updating", windows.ntotal)
        for v, ids in _batches(self.catalog.vectors_of(changed), batch):
            windows.add_with_ids(centre(v, mean), ids)
            report("updating", windows.ntotal)
        return windows, mean

    def save_faiss(self, on_progress=None) -> None:
        """Write the FAISS files for the current generation (atomically) and drop older ones.

        `on_progress(stage, windows added)`: as for `_build`.
        """
        import faiss
        gen, windows, tracks, means = self._build(on_progress=on_progress)
        wpath, tpath, mpath = self._derived_files(gen)
        tmp = mpath.with_name(mpath.name + ".tmp")
        tmp.write_bytes(means.tobytes())
        os.replace(tmp, mpath)  # each file lands whole; they are only used when all three exist
        for path, index in ((wpath, windows), (tpath, tracks)):
            tmp = path.with_name(path.name + ".tmp")
            faiss.write_index(index, str(tmp))
            os.replace(tmp, path)
        current = {wpath, tpath, mpath}
        for old in self._all_derived():
            if old not in current:
                old.unlink(missing_ok=True)

    def faiss_saved(self, gen: int | None = None) -> bool:
        """Whether the FAISS files of generation `gen` (default: the catalog's now) are on disk."""
        gen = self.catalog.generation if gen is None else gen
        return all(p.is_file() for p in self._derived_files(gen))

    def _derived_files(self, gen: int) -> tuple[Path, Path, Path]:
        """The FAISS window and track indexes and the windows' mean vector at generation `gen`."""
        return (self.root / f"windows-{gen}.faiss", self.root / f"tracks-{gen}.faiss", self.root / f"mean-{gen}.f32")

    def _all_derived(self) -> list[Path]:
        """Every derived file, with the `.tmp` halves a killed writer may have left."""
        return [*self.root.glob("*.faiss"), *self.root.glob("mean-*.f32"), *self.root.glob("*.faiss.tmp"),
                *self.root.glob("mean-*.f32.tmp")]

    def faiss_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._all_derived())

    def faiss_type(self) -> str:
        n = self.catalog.stats()["windows"]
        kind = index_kind(n, self.vectors)
        if kind == "exact":
            return "IndexFlatIP (exact)"
        return f"{_FAISS_TYPES[kind]}{' (8-bit)' if kind == 'ivf-sq8' else ''} (nprobe {self.vectors.ivf_nprobe})"

    def close(self):
        self.catalog.close()


def _held_ids(windows) -> np.ndarray:
    """The ids of every vector an IVF window index holds."""
    import faiss
    lists = windows.invlists
    return np.concatenate([np.zeros(0, np.int64)] + [
        faiss.rev_swig_ptr(lists.get_ids(k), lists.list_size(k)).copy()
        for k in range(windows.nlist) if lists.list_size(k)])


_FAISS_TYPES = {"exact": "IndexIDMap2", "ivf-sq8": "IndexIVFScalarQuantizer", "ivf-pq": "IndexIVFPQ"}


def _suits(windows, n: int, cfg: VectorConfig) -> bool:
    """Whether a saved window index is the approximate kind `n` windows get, with lists for a quarter to 4 times `n`.

    An exact index is never brought up to date: rebuilding one takes under a second
    (100,000 windows at most), and a small collection's mean moves most as it grows.
    """
    kind = index_kind(n, cfg)
    if kind == "exact" or type(windows).__name__ != _FAISS_TYPES[kind]:
        return False
    return windows.nlist <= 2 * ivf_lists(n) <= 4 * windows.nlist


def _batches(vectors, size: int):
    """`Catalog.all_vectors()` -> (window vectors `[<= size or one track's, D]`, their FAISS ids) in batches."""
    v, ids, held = [], [], 0
    for track_id, w, _ in vectors:
        v.append(w)
        ids.append(window_id(track_id, np.arange(len(w), dtype=np.int64)))
        held += len(w)
        if held >= size:
            yield np.concatenate(v), np.concatenate(ids)
            v, ids, held = [], [], 0
    if held:
        yield np.concatenate(v), np.concatenate(ids)
