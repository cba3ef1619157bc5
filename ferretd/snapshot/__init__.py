"""Snapshots: ONNX export of a consistent weight version, manifests, and the on-disk store."""
