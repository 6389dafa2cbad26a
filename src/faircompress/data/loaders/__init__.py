"""Dataset loaders, one module each; every module here registers itself in `data.registry.DATASETS`."""
