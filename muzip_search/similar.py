"""Whole-track similarity and index statistics."""
from pathlib import Path

import numpy as np

from indexer.audio import raise_quiet, to_pcm16
from indexer.index import Index
from indexer.pipeline import Decoded, decode_stage, encode_stage, pool_stage
from indexer.vectors import centre


def similar_tracks(index: Index, track_id: int, top: int = 5) -> list[dict]:
    """The `top` tracks nearest to `track_id` by whole-track vector (itself left out), best first."""
    return _nearest(index, index.catalog.track_vector(track_id), top, {track_id})


def similar_to_file(index: Index, path: Path, top: int = 5) -> list[dict]:
    """The `top` indexed tracks nearest to the audio file `path` by whole-track vector, best first, the vector
    made by indexing's own stages (so a file that is in the index gets its stored one); tracks holding the very
    same file (its content hash) are left out. AudioError where the file cannot be read or is under a second."""
    d = decode_stage(path, index.model.cfg.sample_rate, index.vectors.window_s)
    if d.error is not None:
        raise d.error
    return _nearest(index, _whole(index, d), top, index.catalog.ids_with_hash(d.hash))


def similar_to_signal(index: Index, x: np.ndarray, top: int = 5) -> list[dict]:
    """`similar_to_file` for a mono signal `[T]` at the model's rate (a query's clip, of a second or more), a quiet
    one raised to music's level as indexing raises a quiet track (`decode_stage`)."""
    x, gain = raise_quiet(x)
    d = Decoded(Path(), 0, 0.0, "", seconds=len(x) / index.model.cfg.sample_rate, audio=to_pcm16(x), gain=gain)
    return _nearest(index, _whole(index, d), top, set())


def _whole(index: Index, d: Decoded) -> np.ndarray:
    """The whole-track vector of a decoded file, as indexing makes it."""
    encoded = encode_stage(index.model, [d], spec=index.vectors)[0]
    if d.error is not None:  # (a long file streamed from disk fails in the encode stage)
        raise d.error
    latents, samples = encoded
    return pool_stage(index.model, latents, samples, index.vectors, d.spectrogram)[1]


def _nearest(index: Index, whole: np.ndarray, top: int, leave_out: set[int]) -> list[dict]:
    s = index.searchable()
    vec = centre(whole[None, :], s.track_mean)
    sims, ids = s.tracks.search(vec, min(top + len(leave_out), s.tracks.ntotal))
    hits = [(int(i), float(d)) for i, d in zip(ids[0], sims[0]) if i >= 0 and i not in leave_out][:top]
    rows = index.catalog.tracks(i for i, _ in hits)
    return [{"track_id": i, "path": rows[i]["path"], "score": round(d, 4), "title": rows[i]["title"],
             "artist": rows[i]["artist"], "genre": rows[i]["genre"]} for i, d in hits]


def index_stats(index: Index) -> dict:
    st = index.catalog.stats()
    hours = st["audio_hours"]
    return {
        "tracks": st["tracks"],
        "audio_hours": round(hours, 4),
        "failed": st["failed"],
        "raised_tracks": st["raised"],  # quiet tracks stored raised to music's level (`Catalog.track_gain`)
        "windows": st["windows"],
        "latent_bytes": st["latent_bytes"],
        "vector_bytes": st["vector_bytes"],
        "spectrogram_bytes": st["spectrogram_bytes"],
        "faiss_bytes": index.faiss_bytes(),
        "catalog_bytes": index.catalog.path.stat().st_size,
        "stored_kbps": round(st["latent_bytes"] * 8 / (hours * 3600) / 1000, 2) if hours else None,
        "model": index.manifest["model_name"],
        "model_checksum": index.manifest["model_checksum"],
        "model_kbps": index.manifest["kbps"],
        "faiss_index": index.faiss_type(),
        "track_vector": index.vectors.whole,  # what `similar` compares (an index made before session 22: latent-energy)
    }
