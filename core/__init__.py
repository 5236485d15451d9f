"""U-Net Lab core library: datasets, augmentation, the U-Net, training, prediction,
metrics, post-processing and the run registry. Usable without Streamlit."""

__version__ = "0.1.0"
