"""Measures of a model or its predictions: group metrics, statistics, size, ONNX Runtime."""
