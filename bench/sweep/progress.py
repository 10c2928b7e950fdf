"""The progress display of a sweep: a tqdm bar on a terminal, plain lines in a redirected log."""

from __future__ import annotations

import sys


class Progress:
    """`done(line)` counts one config and prints its summary line, always on stderr (stdout
    keeps the results table). The bar is drawn only when enabled and stderr is a terminal."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.tqdm = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, unit="config", file=sys.stderr, dynamic_ncols=True)

    def done(self, line: str, count: bool = True) -> None:
        """Print `line`; count it as one more finished config unless `count` is False."""
        if self.tqdm is None:
            print(line, file=sys.stderr)
            return
        if count:
            self.tqdm.update(1)
        self.tqdm.write(line, file=sys.stderr)  # tqdm.write's default is stdout

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
