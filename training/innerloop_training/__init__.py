"""Meta-training for innerloop: data sources, episode sampling, the training loop and evaluation.

Kept apart from the ``innerloop`` runtime package so the server image does not need training code.
"""
