"""Progress bars on stderr: live on a terminal, an update every few seconds in a log."""
import sys

from tqdm import tqdm


def bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=sys.stderr,
                mininterval=0.1 if sys.stderr.isatty() else 5.0, dynamic_ncols=True)
