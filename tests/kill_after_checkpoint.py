"""`python kill_after_checkpoint.py STEP spanqa-args...`: run `spanqa` and SIGKILL the process right after the
checkpoint of optimiser step STEP is on disk: a real kill, at a moment the test chooses (no sleeping, no race)."""

from __future__ import annotations

import os
import signal
import sys

from spanqa import training
from spanqa.cli import main

KILL_AT = int(sys.argv[1])
_save = training.save_checkpoint


def save_then_die(out, reader, opt, state, rng):
    _save(out, reader, opt, state, rng)
    if state["step"] == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


training.save_checkpoint = save_then_die  # maybe_checkpoint looks it up in the module at every call
sys.exit(main(sys.argv[2:]))
