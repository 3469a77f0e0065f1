"""Quiet chatty libraries: orbax's, grain's and tfds' INFO lines, unless asked for.

    from hyperinit import _logging
    _logging.quiet_libraries()                  # hide them (warnings and errors still show)
    _logging.quiet_libraries(verbose=True)      # show them again (a main's --verbose)

A restore or save through orbax logs ~20 INFO lines (handler registration, paths,
timings) that drown a command's own output; they say nothing a user acts on.
"""

from __future__ import annotations

import logging as py_logging
import os

from absl import logging

LIBRARIES = ('orbax', 'grain', 'tensorflow_datasets')


class _DropLibraryInfo(py_logging.Filter):
  """A logging filter that drops INFO (and lower) records logged from `packages`' files."""

  def __init__(self, packages: tuple[str, ...] = LIBRARIES):
    super().__init__()
    self._frags = tuple(f'{os.sep}{p}{os.sep}' for p in packages)

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or not any(f in record.pathname for f in self._frags)


_FILTER = _DropLibraryInfo()


def quiet_libraries(verbose: bool = False) -> None:
  """Hides (verbose=False) or shows (True) the INFO lines of `LIBRARIES` on absl's logger.

  Idempotent; applies to every handler of the absl logger (stderr and log files).
  """
  logger = logging.get_absl_logger()
  if verbose:
    logger.removeFilter(_FILTER)
  elif _FILTER not in logger.filters:
    logger.addFilter(_FILTER)
