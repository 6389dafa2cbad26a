"""faircompress: what does model compression do to the fairness of a facial expression recognition model?"""

__version__ = "0.1.0"
