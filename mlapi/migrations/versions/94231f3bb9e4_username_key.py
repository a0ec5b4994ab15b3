"""username key

Revision ID: 94231f3bb9e4
Revises: c5b8a0702df1
Create Date: 2026-12-03 08:10:00.000000

User names are unique by their key (NFKC, case folding, NFKC; see mlapi/credentials.py),
so ``Alice``, ``ALICE`` and fullwidth ``ＡＬＩＣＥ`` are one name. Users created before this
revision may already clash: the upgrade then stops before changing anything and names
them, with the SQL that resolves it; nothing is merged or renamed silently.

"""
import unicodedata
from collections import defaultdict

from alembic import op
import sqlalchemy as sa

from mlapi.database import MigrationRefused


# revision identifiers, used by Alembic.
revision = '94231f3bb9e4'
down_revision = 'c5b8a0702df1'
branch_labels = None
depends_on = None

KEY_LENGTH = 256
users = sa.table(
    'users',
    sa.column('id', sa.Integer),
    sa.column('username', sa.String),
    sa.column('username_key', sa.String),
)


def username_key(username):
    # A copy of mlapi.credentials.username_key as of this revision: a migration keeps
    # the rule it was written with even if the application's rule changes later.
    return unicodedata.normalize('NFKC', unicodedata.normalize('NFKC', username).casefold())


def clash_report(rows):
    """None if every key is unique and fits, else a message naming the users and the fix."""
    by_key = defaultdict(list)
    for user_id, username in rows:
        by_key[username_key(username)].append((user_id, username))
    clashes = [group for group in by_key.values() if len(group) > 1]
    too_long = [(i, name) for key, group in by_key.items() for i, name in group if len(key) > KEY_LENGTH]
    if not clashes and not too_long:
        return None
    lines = [
        'Cannot make user names unique ignoring case and Unicode width: '
        'existing users would be one name to a person.'
    ]
    for group in clashes:
        names = ', '.join(f'{name!r} (id {user_id})' for user_id, name in sorted(group))
        lines.append(f'  same name: {names}')
    for user_id, name in too_long:
        lines.append(f'  name too long once normalised: {name!r} (id {user_id})')
    example_id, _ = sorted(clashes[0])[-1] if clashes else too_long[0]
    lines.append(
        'Keep one user of each group: rename the others or delete them in the database, '
        f"e.g. UPDATE users SET username = 'new-name' WHERE id = {example_id}; "
        f'or DELETE FROM users WHERE id = {example_id}; '
        'then start mlapi again (or run: flask --app wsgi db upgrade). Nothing was changed.'
    )
    return '\n'.join(lines)


def upgrade():
    bind = op.get_bind()
    rows = bind.execute(sa.select(users.c.id, users.c.username)).all()
    report = clash_report(rows)
    if report:
        raise MigrationRefused(report)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('username_key', sa.String(length=KEY_LENGTH), nullable=True))
    for user_id, username in rows:
        bind.execute(
            users.update().where(users.c.id == user_id).values(username_key=username_key(username))
        )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('username_key', existing_type=sa.String(length=KEY_LENGTH), nullable=False)
        batch_op.create_index(batch_op.f('ix_users_username_key'), ['username_key'], unique=True)


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_username_key'))
        batch_op.drop_column('username_key')
