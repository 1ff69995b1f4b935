"""The results database: SQLAlchemy models, engine factory, migrations and queries."""
