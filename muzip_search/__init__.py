"""muzip-search: index music through a neural codec and find where a clip comes from."""
__version__ = "0.1.0"
