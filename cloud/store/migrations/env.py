"""Alembic environment: runs on the connection that :func:`fpnlink.cloud.store.database.migrate` passes in."""

from alembic import context

from fpnlink.cloud.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
