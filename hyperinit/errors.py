"""The library's own error types for bad input (a config value, a flag, a path, a plan).

The command-line mains (`experiments/_errors.py`) print these, and the standard
ValueError / OSError they derive from, as one line; every other exception is a bug
and keeps its traceback.

    from hyperinit import errors
    raise errors.UserInputError(f'--dst {dst!r} is inside the source run {run!r}; ...')
"""

from __future__ import annotations


class UserInputError(ValueError):
  """Input a user gave cannot be used; the message names it and what was expected."""


class UnknownKeyError(UserInputError, KeyError):
  """A name that is not there (a config field, a preset); still a KeyError for callers.

  Prints its message as written: KeyError's own str() would add quotes.
  """

  __str__ = ValueError.__str__


class ResourceError(UserInputError):
  """A plan that needs more than the machine has (memory), refused before allocating."""
