"""Generated Open Inference Protocol v2 stubs (`make protos` regenerates them)."""
