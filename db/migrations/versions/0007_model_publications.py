"""model versions published in the database, for workers on other machines

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_publications",
        sa.Column("name", sa.String(length=80), primary_key=True),
        sa.Column("archive", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_model_publications_promoted_at", "model_publications", ["promoted_at"])


def downgrade() -> None:
    op.drop_index("ix_model_publications_promoted_at", table_name="model_publications")
    op.drop_table("model_publications")
