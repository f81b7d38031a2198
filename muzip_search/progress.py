"""Progress bars on stderr: live on a terminal, an update every few seconds in a log."""
import sys
from collections.abc import Callable

from tqdm import tqdm


def bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=sys.stderr,
                mininterval=0.1 if sys.stderr.isatty() else 5.0, dynamic_ncols=True)


def faiss_bar(windows: int, enabled: bool = True) -> tuple[tqdm, Callable[[str, int], None]]:
    """A bar for `Index.save_faiss(on_progress=...)` over `windows` window vectors: (bar, its callback)."""
    b = bar(windows, "faiss", "window", enabled)
    shown = [""]

    def on_progress(stage: str, added: int):
        if stage != shown[0]:
            shown[0] = stage
            b.set_description_str(f"faiss ({stage})")  # shown at once: training an IVF index is one long step
        b.update(added - b.n)

    return b, on_progress
