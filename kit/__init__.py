"""nightkit: semi-supervised action recognition in the dark.

The package holds the training code; the notebooks in ``notebooks/`` call it stage by stage.
"""

__version__ = "0.1.0"
