"""Audio decoding, collections and the pipeline stages between files and the codec."""
import models  # noqa: F401  (first: it sets OpenMP's wait policy before torch and faiss load)
