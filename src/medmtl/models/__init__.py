"""Models: trunks, heads and the multi-task network that joins them."""
