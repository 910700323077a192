"""seqtrain: a TensorFlow trainer for neural machine translation with guided alignment."""

__version__ = "0.1.0"
