"""Datasets: the in-memory FaceDataset, the loaders (one module each in `loaders/`), the synthetic benchmark."""
