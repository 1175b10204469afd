"""The training engine: one explicit loop run by Lightning Fabric (CPU, CUDA + AMP, DDP)."""
