"""ONNX Runtime inference: sessions, the model bundle, the text encoder and dynamic batching."""
