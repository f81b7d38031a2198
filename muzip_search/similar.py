"""Whole-track similarity and index statistics."""
import numpy as np

from indexer.index import Index
from indexer.vectors import centre


def similar_tracks(index: Index, track_id: int, top: int = 5) -> list[dict]:
    """The `top` tracks nearest to `track_id` by whole-track vector (itself left out), best first."""
    s = index.searchable()
    vec = centre(index.catalog.track_vector(track_id)[None, :], s.track_mean)
    sims, ids = s.tracks.search(vec, min(top + 1, s.tracks.ntotal))
    hits = [(int(i), float(d)) for i, d in zip(ids[0], sims[0]) if i >= 0 and i != track_id][:top]
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
    }
