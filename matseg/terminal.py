"""What a person sees while a run goes on: a progress bar per stage, the library's log lines on
stderr, and the fit check's warning held back for the summary (which :mod:`matseg.console`
formats)."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

# dask's progress-bar format ("[####    ] | 45% Completed | 2.1s") after the stage's name,
# which tools such as the napari plugin read from matseg's stderr
BAR_FORMAT = "{desc}: [{bar:40}] | {percentage:3.0f}% Completed | {elapsed}"
# a stage shorter than this shows no bar (nor does a run refused at once)
BAR_DELAY_S = 2.0
progress_log = logging.getLogger("matseg.progress")


class StageBars:
    """A ``progress(stage, done, total)`` callback: a progress bar per stage on stderr, or
    (``bars`` False) a log line as each stage ends, on the ``matseg.progress`` logger."""

    def __init__(self, bars: bool):
        self.bars, self.bar, self.stage, self.started = bars, None, None, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.started = stage, time.perf_counter()
            if self.bars and total:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total,
                    desc=stage,
                    file=sys.stderr,
                    mininterval=1.0,
                    delay=BAR_DELAY_S,
                    bar_format=BAR_FORMAT,
                    ascii=" #",
                )
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()
            if not self.bars:
                seconds = time.perf_counter() - self.started
                progress_log.info(f"{stage}: {done} of {total} done in {seconds:.1f} s")
            self.stage = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def setup_logging() -> None:
    """The library's log lines on stderr, as ``matseg: ...`` (info and above; see ``-v``, ``--quiet``)."""
    logger = logging.getLogger("matseg")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _StderrHandler)]
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("matseg: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    progress_log.setLevel(logging.NOTSET)  # (what --quiet raised, in this process before)


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (a test's captured one, too)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextmanager
def fit_warning_in_summary():
    """While ``matseg segment`` runs: the fit check's warning (the volume unlike the weights'
    training data) is held back, for the summary's ``fit`` line says the same; a run that ends
    without a summary (an error) logs it after all."""
    fit_log = logging.getLogger("matseg.candidates.fit")
    held = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        held.append(record)
        return False

    fit_log.addFilter(hold)
    try:
        yield
    except BaseException:
        fit_log.removeFilter(hold)
        for record in held:
            fit_log.handle(record)
        raise
    finally:
        fit_log.removeFilter(hold)
