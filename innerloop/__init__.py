"""innerloop: the code shared by training and serving (models, the inner loop, checkpoints)."""

__version__ = "0.1.0"
