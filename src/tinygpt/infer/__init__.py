"""Using a trained model: the run loader, sampling, decoding, the batching engine, ONNX."""
