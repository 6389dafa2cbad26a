"""Compression steps, one module per technique (each registers itself in `recipes.STEPS`), recipes and export."""
