"""What every ``trdetr-*`` command line shares: one help style and a quiet end on a closed pipe.

Kept free of torch (and of anything heavy) so that ``--help`` of every tool answers at once.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["SIGPIPE_EXIT", "HelpFormatter", "exits_quietly_on_broken_pipe"]

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions kept as written (module docstrings with examples) and each flag's default appended.

    The default is left out where it says nothing: required arguments and ``None`` defaults (there the
    help text says what happens without the flag).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def exits_quietly_on_broken_pipe(main: Callable[..., T]) -> Callable[..., T | int]:
    """Wrap a CLI ``main`` so that ``tool ... | head`` ends with status 141 instead of a BrokenPipeError.

    Once the reader has gone, stdout is pointed at ``/dev/null`` so that the interpreter's final flush
    cannot raise again (the recipe of the Python ``signal`` documentation).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return SIGPIPE_EXIT

    return wrapper
