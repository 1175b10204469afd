"""Transfer protocols and comparison strategies (a registry)."""
