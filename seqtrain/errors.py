"""The one exception type for user errors (bad config, bad data files, bad command-line use).

The CLI turns a SeqtrainError into one line on stderr and exit status 2, without a traceback:
the message itself must name the file, the line or key, and what to do.
"""


class SeqtrainError(Exception):
    """A problem with the user's input that they can fix; never a bug in seqtrain."""
