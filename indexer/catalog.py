"""The catalog: SQLite (through sqlite-utils) is the source of truth of an index.

Tables:
- `tracks`: one row per file seen (path, size, mtime, content hash, duration,
  original rate and channels, FMA metadata, status `indexed` or `failed` + reason,
  and `gain`: what a quiet track was raised by before it was encoded, `audio.raise_quiet`).
- `latents`: each indexed track's int8 latents `[N, C, F]`, enough to decode any second.
- `vectors`: each track's window vectors `[W, D]` (float16) and whole-track vector.
- `spectrograms`: each indexed track's band energies `[T, bands]` (uint8, `vectors.stored_energies`), which
  re-scoring compares with a clip's, from the track's own audio (in indexes made since they are stored).
  Latents and band energies are stored packed (`packing`: blocks compressed one by one, `block` rows each). A
  catalog made before that has no `block` column in those tables: its rows are raw, and so are those written to it.
- `latents_parts`, `spectrograms_parts`: a long track's packed arrays after its first `PART_ROWS` rows (2 minutes
  of audio), in parts of as many rows, keyed by `part_id` (in catalogs made since; `parts` in `meta`). SQLite reads
  a stretch deep in a blob only by walking its pages from the start: 3 s from the middle of a 2-hour track's
  latents took 4.2 ms to read in one row, and a 5-s query of that track read 30-35 ms (BENCHMARKS.md).
- `meta`: the manifest and the `generation`, bumped in the same transaction as
  every change, so FAISS files stamped with a generation are stale exactly when
  the catalog has moved on.
- `changes`: the tracks each generation wrote or removed (from generation
  `changes_from` in `meta`), so stale FAISS files can be brought up to date.
Every track is written in one transaction: a kill at any moment leaves a track
wholly in or wholly out.
"""
import json
import sqlite3
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlite_utils

from . import packing

SCHEMA_VERSION = 1
# how each table's arrays are packed: (rows per block, rows stored as differences from the row before)
PACKING = {"latents": (1, False), "spectrograms": (100, True)}  # a 1-s chunk; 1 s of 10-ms frames
# rows of each packed table per part (2 minutes of audio): a track's first part in the table's own row, the others
# in `{table}_parts`; saved in a new catalog's `meta`, which a catalog made before lacks (one part, however long)
PART_ROWS = {"latents": 120, "spectrograms": 12_000}
_PART_BITS = 24  # a part's row id: its track's id, shifted, and the part's number (`part_id`)


@dataclass
class TrackRecord:
    """Everything the catalog stores about one file."""
    path: str
    size: int
    mtime: float
    hash: str
    status: str                         # "indexed" or "failed"
    reason: str | None = None
    seconds: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    genre: str | None = None
    latents: np.ndarray | None = None   # int8 [N, C, F]
    samples: int | None = None          # samples at the model's rate (the last chunk is padded)
    windows: np.ndarray | None = None   # float16 [W, D]
    whole: np.ndarray | None = None     # float32 [D2]
    spectrogram: np.ndarray | None = None  # uint8 [T, bands] (`vectors.stored_energies`), where the index stores them
    wanted_id: int | None = None        # FMA id from the file name, if any
    gain: float | None = None           # what the stored audio was raised by (`audio.raise_quiet`), where indexed
    packed: dict[str, list[bytes]] = field(default_factory=dict)  # table -> its array packed, part by part
                                                    # (`pack_record`), by a stage before the writer, which only inserts


class Catalog:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        uri = f"file:{self.path}?mode=ro" if readonly else str(self.path)
        # a searcher reads from a second thread too (`Searcher`'s jobs ahead); SQLite serializes a connection's
        # use where `sqlite3.threadsafety` is 3, and writes stay on the one thread that indexes
        conn = sqlite3.connect(uri, uri=readonly, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 60000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")  # readers never block the single writer
            conn.execute("PRAGMA synchronous = NORMAL")
        self.db = sqlite_utils.Database(conn)
        if not readonly:
            self._create()
        # which tables store arrays packed: those of a catalog made before that have no `block` column, and the
        # column is not added, since SQLite reads a row's columns after a blob only by walking the blob's pages
        names = self.db.table_names()
        self._packs = {t: t in names and "block" in self.db[t].columns_dict for t in PACKING}
        # (opened read-only before its writer made its tables: none)
        parts = json.loads(self.get_meta("parts") or "{}") if "meta" in names else {}
        self._part_rows = {t: parts.get(t) for t in PACKING if self._packs[t]}  # None: one part

    def _create(self):
        db = self.db
        if "meta" not in db.table_names():
            with db.conn:
                db["meta"].create({"key": str, "value": str}, pk="key")
                db["tracks"].create({
                    "id": int, "path": str, "size": int, "mtime": float, "hash": str, "status": str,
                    "reason": str, "seconds": float, "sample_rate": int, "channels": int, "title": str,
                    "artist": str, "album": str, "genre": str, "chunks": int, "indexed_at": float,
                    "gain": float}, pk="id")
                db["tracks"].create_index(["path"], unique=True)
                db["latents"].create({"track_id": int, "chunks": int, "samples": int, "shape": str,
                                      "block": int, "data": bytes}, pk="track_id")
                db["vectors"].create({"track_id": int, "windows": int, "dim": int, "data": bytes,
                                      "whole": bytes}, pk="track_id")
                for table in PACKING:
                    db[f"{table}_parts"].create({"part_id": int, "data": bytes}, pk="part_id")
                db["meta"].insert_all([{"key": "schema_version", "value": str(SCHEMA_VERSION)},
                                       {"key": "generation", "value": "0"},
                                       {"key": "parts", "value": json.dumps(PART_ROWS)}])
        if "spectrograms" not in db.table_names():  # in a catalog made before they were stored: from now on
            with db.conn:
                db["spectrograms"].create({"track_id": int, "frames": int, "bands": int, "block": int,
                                           "data": bytes}, pk="track_id")
        if "gain" not in db["tracks"].columns_dict:  # a catalog made before quiet tracks were raised: its tracks
            db["tracks"].add_column("gain", float)   # were stored as they were (`track_gain` 1.0)
        # `ids_with_hash` (`similar FILE`) looks a file's hash up: an index, added to a catalog made before too
        db["tracks"].create_index(["hash"], if_not_exists=True)
        if "changes" not in db.table_names():  # a catalog made before it records changes from now on
            with db.conn:
                db["changes"].create({"generation": int, "track_id": int})
                db["changes"].create_index(["generation"])
                db["meta"].insert({"key": "changes_from", "value": str(self.generation)})

    # --- meta -----------------------------------------------------------------
    @property
    def packs(self) -> bool:
        """Whether this catalog stores arrays packed (made since they are): `record` packs them ahead for it."""
        return any(self._packs.values())

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("select value from meta where key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.db.conn:
            self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", "0"))

    def _bump(self, track_ids) -> None:
        """A new generation, which changed `track_ids` (inside the writer's transaction)."""
        self.db.execute("update meta set value = cast(value as integer) + 1 where key = 'generation'")
        gen = self.generation
        self.db.conn.executemany("insert into changes (generation, track_id) values (?, ?)",
                                 [(gen, t) for t in track_ids])

    def changed_since(self, generation: int) -> set[int] | None:
        """Tracks written or removed after `generation`; None if the catalog did not record changes then."""
        start = self.get_meta("changes_from")
        if start is None or generation < int(start):
            return None
        return {r[0] for r in self.db.execute("select track_id from changes where generation > ?", [generation])}

    # --- tracks ---------------------------------------------------------------
    def known(self) -> dict[str, tuple[int, float, str, str]]:
        """path -> (size, mtime, status, content hash) of every file in the catalog."""
        return {r[0]: tuple(r[1:]) for r in self.db.execute("select path, size, mtime, status, hash from tracks")}

    def move(self, moves: list[tuple[str, str, float]]) -> None:
        """Record where files whose content is unchanged are now, and their mtimes: (old path, new path, mtime)
        triples (the same path twice for a file only touched). Their tracks keep their ids, latents and vectors;
        nothing searched changes, so the generation stays."""
        if not moves:
            return
        with self._transaction():
            self.db.conn.executemany("update tracks set path = ?, mtime = ? where path = ?",
                                     [(new, m, old) for old, new, m in moves])

    def _new_id(self, wanted: int | None) -> int:
        if wanted is not None and not self.db.execute("select 1 from tracks where id = ?", [wanted]).fetchone():
            return wanted
        # files whose names are not FMA ids get ids above FMA's range
        top = self.db.execute("select max(id) from tracks").fetchone()[0] or 0
        return max(top + 1, 10_000_000)

    def write(self, rec: TrackRecord) -> int:
        """Insert or replace one file's rows in a single transaction; return its track id."""
        db = self.db
        with self._transaction():
            old = db.execute("select id from tracks where path = ?", [rec.path]).fetchone()
            if old:
                self._delete_rows(old[0])
            track_id = old[0] if old else self._new_id(rec.wanted_id)
            db["tracks"].insert({
                "id": track_id, "path": rec.path, "size": rec.size, "mtime": rec.mtime, "hash": rec.hash,
                "status": rec.status, "reason": rec.reason, "seconds": rec.seconds,
                "sample_rate": rec.sample_rate, "channels": rec.channels, "title": rec.title,
                "artist": rec.artist, "album": rec.album, "genre": rec.genre,
                "chunks": None if rec.latents is None else len(rec.latents), "indexed_at": time.time(),
                "gain": rec.gain})
            if rec.status == "indexed":
                db["latents"].insert({"track_id": track_id, "chunks": len(rec.latents), "samples": rec.samples,
                                      "shape": json.dumps(list(rec.latents.shape[1:])),
                                      **self._stored("latents", rec, track_id)})
                db["vectors"].insert({"track_id": track_id, "windows": len(rec.windows),
                                      "dim": rec.windows.shape[1],
                                      "data": rec.windows.astype(np.float16).tobytes(),
                                      "whole": rec.whole.astype(np.float32).tobytes()})
                if rec.spectrogram is not None:
                    db["spectrograms"].insert({"track_id": track_id, "frames": len(rec.spectrogram),
                                               "bands": rec.spectrogram.shape[1],
                                               **self._stored("spectrograms", rec, track_id)})
            self._bump([track_id])
        return track_id

    @contextmanager
    def _transaction(self):
        """A write transaction, committed whole at the block's end or rolled back whole. A Ctrl-C can land
        between the commit and the block's end: the transaction is then committed, and not rolled back."""
        self.db.execute("begin immediate")
        try:
            yield
            self.db.execute("commit")
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("rollback")
            raise

    def _delete_rows(self, track_id: int) -> None:
        for table, key in (("latents", "track_id"), ("vectors", "track_id"), ("spectrograms", "track_id"),
                           ("tracks", "id")):
            self.db.execute(f"delete from {table} where {key} = ?", [track_id])
        for table, rows in self._part_rows.items():
            if rows is not None:
                self.db.execute(f"delete from {table}_parts where part_id between ? and ?",
                                [part_id(track_id, 1), part_id(track_id + 1, 0) - 1])

    def remove(self, track_ids: list[int]) -> int:
        """Delete tracks and everything stored for them; return how many existed."""
        gone = []
        with self._transaction():
            for tid in track_ids:
                if self.db.execute("select 1 from tracks where id = ?", [tid]).fetchone():
                    self._delete_rows(tid)
                    gone.append(tid)
            if gone:
                self._bump(gone)
        return len(gone)

    def track(self, track_id: int) -> dict | None:
        rows = list(self.db.query("select * from tracks where id = ?", [track_id]))
        return rows[0] if rows else None

    def track_by_path(self, path: str) -> dict | None:
        rows = list(self.db.query("select * from tracks where path = ?", [path]))
        return rows[0] if rows else None

    def ids_with_hash(self, content_hash: str) -> set[int]:
        """The tracks whose file had this content hash."""
        return {r[0] for r in self.db.execute("select id from tracks where hash = ?", [content_hash])}

    def tracks(self, track_ids) -> dict[int, dict]:
        ids = list(track_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r["id"]: r for r in self.db.query(f"select * from tracks where id in ({marks})", ids)}

    def latents(self, track_id: int, first: int = 0, last: int | None = None) -> tuple[np.ndarray, int] | None:
        """int8 latents `[n, C, F]` of chunks `first` to `last` (exclusive) of a track, and its length in samples;
        None where it is not stored.

        Only those chunks are read from the database (`_rows`), so any second of a long track is cheap.
        """
        row = self.db.execute(f"select chunks, samples, shape, {self._block('latents')} from latents "
                              "where track_id = ?", [track_id]).fetchone()
        if row is None:
            return None
        chunks, samples, shape, block = row
        c, f = json.loads(shape)
        first = max(0, first)
        last = chunks if last is None else min(last, chunks)
        if last <= first:
            return np.zeros((0, c, f), np.int8), samples
        z = self._rows("latents", track_id, first, last, (c, f), np.int8, block)
        return None if z is None else (z, samples)  # None: removed since (a concurrent `remove`)

    def spectrogram(self, track_id: int, first: int = 0, last: int | None = None) -> np.ndarray | None:
        """Stored band energies uint8 `[n, bands]` of frames `first` to `last` (exclusive) of a track; None where
        none are stored. Only those frames are read, as with `latents`."""
        try:
            row = self.db.execute(f"select frames, bands, {self._block('spectrograms')} from spectrograms "
                                  "where track_id = ?", [track_id]).fetchone()
        except sqlite3.OperationalError:  # an index made before they were stored, opened read-only
            return None
        if row is None:
            return None
        frames, bands, block = row
        first = max(0, first)
        last = frames if last is None else min(last, frames)
        if last <= first:
            return np.zeros((0, bands), np.uint8)
        return self._rows("spectrograms", track_id, first, last, (bands,), np.uint8, block)

    def _stored(self, table: str, rec: TrackRecord, track_id: int) -> dict:
        """The `data` (and `block`) of the row of `table` for `rec`: its array packed as `PACKING` says (by
        `pack_record` before, or here), or raw in a catalog made before arrays were packed. The parts after the
        first go into `{table}_parts`."""
        a = _arrays(rec)[table]
        if not self._packs[table]:
            return {"data": a.tobytes()}
        rows, parts = self._part_rows[table], rec.packed.get(table)
        if parts is None or (rows != PART_ROWS[table] and len(a) > min(rows or len(a), PART_ROWS[table])):
            parts = pack_parts(table, a, rows)  # not packed ahead, or in parts of another size than this catalog's
        if len(parts) > 1:
            self.db.conn.executemany(f"insert into {table}_parts (part_id, data) values (?, ?)",
                                     [(part_id(track_id, i), p) for i, p in enumerate(parts) if i])
        return {"block": PACKING[table][0], "data": parts[0]}

    def _block(self, table: str) -> str:
        """What a select of `table`'s rows reads for their `block`."""
        return "block" if self._packs[table] else "null"

    def _rows(self, table: str, track_id: int, first: int, last: int, shape: tuple[int, ...], dtype,
              block: int | None) -> np.ndarray | None:
        """Rows `first` to `last` (exclusive) of the array in the `data` blob of a track's row in `table` (whose
        key is the rowid): packed in blocks of `block` rows, or raw where `block` is None. None where the row is
        gone, or was replaced between the reads (a concurrent `remove`, or a re-index).

        Only the bytes of those rows, or of their blocks and offsets, are read: SQLite's incremental blob I/O
        (Python 3.11 on). `substr` reads the whole blob first: 58 ms for 3 s of a 2-hour track's raw latents,
        against 0.06 ms for 3 s of a song's. Where the rows span parts (`PART_ROWS`), the blobs of all of them
        are opened before any is read, so that the reads see one moment of the catalog.
        """
        n = self._part_rows.get(table) or max(last, 1)
        spans = [(p, max(first, p * n) - p * n, min(last, (p + 1) * n) - p * n) for p in range(first // n,
                                                                                             -(-last // n))]
        try:
            with ExitStack() as stack:
                reads = [stack.enter_context(self._blob(table, track_id, p)) for p, _, _ in spans]
                out = []
                for read, (_, a, b) in zip(reads, spans):
                    if block is None:
                        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                        out.append(np.frombuffer(read(a * size, (b - a) * size), dtype).reshape(-1, *shape))
                    else:
                        out.append(packing.read_rows(read, a, b, block, dtype, shape, PACKING[table][1]))
                return out[0] if len(out) == 1 else np.concatenate(out)
        except (LookupError, ValueError, sqlite3.OperationalError):
            return None

    @contextmanager
    def _blob(self, table: str, track_id: int, part: int = 0):
        """`read(offset, size)` of the `data` blob of a track's row in `table` (its part `part`: after the first,
        a row of `{table}_parts`); LookupError or sqlite3.OperationalError where the row is gone (a blob handle's
        reads fail once its row is replaced)."""
        table, key, rowid = (table, "track_id", track_id) if part == 0 else (f"{table}_parts", "part_id",
                                                                              part_id(track_id, part))
        if not hasattr(self.db.conn, "blobopen"):  # Python 3.10
            def read(offset: int, size: int) -> bytes:
                row = self.db.execute(f"select substr(data, ?, ?) from {table} where {key} = ?",
                                      [offset + 1, size, rowid]).fetchone()
                if row is None:
                    raise LookupError(track_id)
                return row[0]
            yield read
            return
        with self.db.conn.blobopen(table, "data", rowid, readonly=True) as blob:
            def read(offset: int, size: int) -> bytes:
                blob.seek(offset)
                return blob.read(size)
            yield read

    def track_gain(self, track_id: int) -> float:
        """What a stored track's audio was raised by before it was encoded (`audio.raise_quiet`): 1.0 where it was
        not, or the catalog was made before quiet tracks were raised."""
        try:
            row = self.db.execute("select gain from tracks where id = ?", [track_id]).fetchone()
        except sqlite3.OperationalError:  # made before, opened read-only: no such column
            return 1.0
        return row[0] if row and row[0] is not None else 1.0

    def track_samples(self, track_id: int) -> int | None:
        """A stored track's length in samples at the model's rate; None if it is not stored."""
        row = self.db.execute("select samples from latents where track_id = ?", [track_id]).fetchone()
        return row[0] if row else None

    @contextmanager
    def snapshot(self):
        """Reads inside see the catalog as one moment: what a writer commits meanwhile stays out of them."""
        self.db.execute("begin")
        try:
            yield
        finally:
            self.db.execute("commit")

    def window_count(self) -> int:
        return self.db.execute("select coalesce(sum(windows), 0) from vectors").fetchone()[0]

    def vectors_of(self, track_ids):
        """Yield (track_id, window vectors float16 [W, D], None) of those of `track_ids` that have vectors."""
        ids = sorted(track_ids)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for tid, w, d, data in self.db.execute(
                    f"select track_id, windows, dim, data from vectors where track_id in ({','.join('?' * len(part))})"
                    " order by track_id", part):
                yield tid, _windows(w, d, data), None

    def track_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every track's whole-track vector `[N, D2]` and the track ids `[N]`."""
        rows = self.db.execute("select track_id, whole from vectors order by track_id").fetchall()
        return (np.stack([np.frombuffer(w, dtype=np.float32) for _, w in rows]) if rows else None,
                np.array([t for t, _ in rows], dtype=np.int64))

    def all_vectors(self):
        """Yield (track_id, window vectors float16 [W, D], whole-track vector [D2]) of every track."""
        for tid, w, d, data, whole in self.db.execute(
                "select track_id, windows, dim, data, whole from vectors order by track_id"):
            yield tid, _windows(w, d, data), np.frombuffer(whole, dtype=np.float32)

    def window_vectors(self, track_id: int) -> np.ndarray | None:
        """The window vectors float16 `[W, D]` of an indexed track; None if it has none."""
        row = self.db.execute("select windows, dim, data from vectors where track_id = ?", [track_id]).fetchone()
        return None if row is None else _windows(*row)

    def track_vector(self, track_id: int) -> np.ndarray:
        """The whole-track vector `[D2]` of an indexed track."""
        row = self.db.execute("select whole from vectors where track_id = ?", [track_id]).fetchone()
        if row is None:
            raise KeyError(f"track {track_id} has no vectors")
        return np.frombuffer(row[0], dtype=np.float32)

    def stats(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "tracks": q("select count(*) from tracks where status = 'indexed'"),
            "failed": q("select count(*) from tracks where status = 'failed'"),
            "audio_hours": (q("select coalesce(sum(seconds), 0) from tracks where status = 'indexed'")) / 3600,
            "latent_bytes": self._bytes("latents"),
            "vector_bytes": q("select coalesce(sum(length(data) + length(whole)), 0) from vectors"),
            "spectrogram_bytes": self._bytes("spectrograms"),
            "windows": self.window_count(),
            "raised": self._raised(),
        }

    def _raised(self) -> int:
        """How many indexed tracks were stored raised (`track_gain`): none in a catalog made before that."""
        try:
            return self.db.execute("select count(*) from tracks where status = 'indexed' and gain != 1").fetchone()[0]
        except sqlite3.OperationalError:  # made before, opened read-only: no such column
            return 0

    def _bytes(self, table: str) -> int:
        """The bytes of the arrays stored in `table`, its parts included."""
        names = self.db.table_names()
        return sum(self.db.execute(f"select coalesce(sum(length(data)), 0) from {t}").fetchone()[0]
                   for t in (table, f"{table}_parts") if t in names)

    def close(self):
        self.db.conn.close()


def part_id(track_id: int, part: int) -> int:
    """The row id in `{table}_parts` of part `part` (1 on) of a track's array."""
    return (track_id << _PART_BITS) | part


def pack_parts(table: str, a: np.ndarray, rows: int | None) -> list[bytes]:
    """Array `a` of `table` packed as the catalog stores it: in parts of `rows` rows (None: one part)."""
    rows = rows or max(len(a), 1)
    return [packing.pack(a[i:i + rows], *PACKING[table]) for i in range(0, max(len(a), 1), rows)]


def pack_record(rec: TrackRecord) -> None:
    """Pack `rec`'s latents and band energies as a catalog made now stores them (`rec.packed`): the writer's
    costliest work (about 2 ms per 30-s track on one core), done wherever the record is made, in parallel."""
    rec.packed = {t: pack_parts(t, a, PART_ROWS[t]) for t, a in _arrays(rec).items() if a is not None}


def _arrays(rec: TrackRecord) -> dict[str, np.ndarray | None]:
    """The arrays a record stores in each packed table, in their stored dtypes."""
    return {"latents": None if rec.latents is None else rec.latents.astype(np.int8, copy=False),
            "spectrograms": None if rec.spectrogram is None else rec.spectrogram.astype(np.uint8, copy=False)}


def _windows(windows: int, dim: int, data: bytes) -> np.ndarray:
    """A `vectors` row's window vectors, as stored: float16 `[windows, dim]`."""
    return np.frombuffer(data, dtype=np.float16).reshape(windows, dim)
