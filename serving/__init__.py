"""TF Serving integration: gRPC server stand-in, client and deployment configs."""
