"""Audio decoding, collections and the pipeline stages between files and the codec."""
