"""The one exception type for user errors (bad config, bad data files, bad command-line use).

The CLI turns a SeqtrainError into one line on stderr and exit status 2, without a traceback:
the message itself must name the file, the line or key, and what to do.
"""


class SeqtrainError(Exception):
    """A problem with the user's input that they can fix; never a bug in seqtrain."""


class Interrupted(SeqtrainError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint. The CLI exits with
    128 + the signal number, the status a shell reports for a process killed by that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum
