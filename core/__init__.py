"""U-Net Lab core library: datasets, augmentation, the U-Net, training, prediction,
metrics, post-processing and the run registry. Usable without Streamlit."""

__version__ = "0.1.0"

import os

# albumentations asks PyPI for a newer version on every import; that is a network call
# from every training process and test, and it must not happen offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
