"""Alembic's migrations (Flask-Migrate): env.py and versions/, loaded by Alembic by path."""

import os

DIRECTORY = os.path.dirname(__file__)
# Exit status of ``python -m mlapi.schema`` when the database is unavailable.
EXIT_UNAVAILABLE = 3
