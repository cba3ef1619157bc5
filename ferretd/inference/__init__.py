"""ferret-infer: serves predictions from ONNX snapshots with onnxruntime. Never imports torch."""
