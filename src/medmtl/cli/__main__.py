"""``python -m medmtl.cli``: the ``medmtl`` command without its console script."""
from medmtl.cli import app

app()
