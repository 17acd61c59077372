"""Verified e-mail addresses.

* ``email_verified``: whether the owner proved they receive mail at ``email`` (a link of
  ``POST /auth/email/verify``, a confirmed e-mail change, or ``tokenward users verify``);
  false for every existing account.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tokenward_users",
        sa.Column("email_verified", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("tokenward_users") as batch:
        batch.drop_column("email_verified")
