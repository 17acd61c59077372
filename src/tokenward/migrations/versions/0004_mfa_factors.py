"""Second factors and recovery codes (issue 14).

* ``tokenward_mfa_factors``: a user's second factors. TOTP rows hold the sealed secret
  (AES-GCM, key outside the database); the ``credential_id`` and ``sign_count`` columns are
  for passkeys (WebAuthn), which will be rows of another ``kind``.
* ``tokenward_mfa_recovery_codes``: SHA-256 digests of the recovery codes, single-use.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokenward_mfa_factors",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("secret", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("confirmed_at", sa.BigInteger, nullable=True),
        sa.Column("last_used_at", sa.BigInteger, nullable=True),
        sa.Column("credential_id", sa.String(255), nullable=True),
        sa.Column("sign_count", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_tokenward_mfa_factors_user", "tokenward_mfa_factors", ["user_id"])
    op.create_index(
        "ix_tokenward_mfa_factors_credential",
        "tokenward_mfa_factors",
        ["credential_id"],
        unique=True,
    )
    op.create_table(
        "tokenward_mfa_recovery_codes",
        sa.Column("user_id", sa.String(32), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("tokenward_mfa_recovery_codes")
    op.drop_index("ix_tokenward_mfa_factors_credential", table_name="tokenward_mfa_factors")
    op.drop_index("ix_tokenward_mfa_factors_user", table_name="tokenward_mfa_factors")
    op.drop_table("tokenward_mfa_factors")
