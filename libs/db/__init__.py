"""The relational store: SQLAlchemy models shared by the services, engine, Alembic migrations.

The same models run on PostgreSQL (asyncpg) and SQLite (aiosqlite).
"""
