"""Reports: results tables and a self-contained HTML page."""
