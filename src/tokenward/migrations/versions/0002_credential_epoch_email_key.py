"""Credential epochs, and case-folded email keys.

* ``credential_epoch``: moved forward by every change that must lock out whoever knew the old
  credentials (password change, disable, ``sessions revoke --user``); 0 for every existing
  account.
* ``email_key``: :func:`tokenward.users.email_key` of the email (NFKC + ``casefold``), unique.
  Emails were stored lower-cased only, so ``straße@`` and ``strasse@`` (or ``σίσυφος@`` and
  ``σίσυφοσ@``) could be two accounts. Where existing accounts fold to one key, the oldest
  keeps it; the later ones get ``NULL`` (a unique index admits several) and cannot log in by
  email until an operator resolves the collision. One warning per such account is logged,
  by user id (no address in logs); ``tokenward users collisions`` lists them.

Revision ID: 0002
Revises: 0001
"""

import logging

import sqlalchemy as sa
from alembic import op

from tokenward.users import email_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("tokenward.migrations")

_users = sa.table(
    "tokenward_users",
    sa.column("id", sa.String),
    sa.column("email", sa.String),
    sa.column("created_at", sa.BigInteger),
    sa.column("email_key", sa.String),
)


def upgrade() -> None:
    op.add_column(
        "tokenward_users",
        sa.Column("credential_epoch", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column("tokenward_users", sa.Column("email_key", sa.String(762), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_users.c.id, _users.c.email).order_by(_users.c.created_at, _users.c.id)
    ).all()
    holders: dict[str, str] = {}
    for row in rows:
        key = email_key(row.email)
        holder = holders.setdefault(key, row.id)
        if holder != row.id:
            log.warning(
                "user %s folds to the email key of the older user %s: it cannot log in by "
                "email until resolved (tokenward users collisions)",
                row.id,
                holder,
            )
    if holders:
        conn.execute(
            sa.update(_users)
            .where(_users.c.id == sa.bindparam("uid"))
            .values(email_key=sa.bindparam("key")),
            [{"uid": uid, "key": key} for key, uid in holders.items()],
        )
    op.create_index("ix_tokenward_users_email_key", "tokenward_users", ["email_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_tokenward_users_email_key", table_name="tokenward_users")
    with op.batch_alter_table("tokenward_users") as batch:
        batch.drop_column("email_key")
        batch.drop_column("credential_epoch")
