"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 13:54:00.805750

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    
    op.create_table('asset_names',
    sa.Column('name', sa.String(length=129), nullable=False),
    sa.Column('asset_type', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_asset_names'))
    )
    op.create_table('events',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('asset_id', sa.String(length=26), nullable=True),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('trace_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_asset_id_id', ['asset_id', 'id'], unique=False)
        batch_op.create_index('ix_events_published_at_id', ['published_at', 'id'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('assets',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('asset_type', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=129), nullable=False),
    sa.Column('version', sa.String(length=256), nullable=False),
    sa.Column('version_key', sa.String(length=256), nullable=False),
    sa.Column('version_sort', sa.LargeBinary(), nullable=False),
    sa.Column('prerelease', sa.Boolean(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('license', sa.String(length=256), nullable=True),
    sa.Column('annotations', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('content_type', sa.String(length=255), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('checksum_algorithm', sa.String(length=16), nullable=True),
    sa.Column('checksum_value', sa.String(length=128), nullable=True),
    sa.Column('storage_uri', sa.Text(), nullable=True),
    sa.Column('provenance', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('provenance_author', sa.String(length=256), nullable=True),
    sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('artifact', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('rejection', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('compliance_status', sa.String(length=16), nullable=False),
    sa.Column('compliance', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deprecated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deleted_by', sa.String(length=64), nullable=True),
    sa.Column('row_version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['name'], ['asset_names.name'], name=op.f('fk_assets_name_asset_names')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_assets')),
    sa.UniqueConstraint('name', 'version_key', name=op.f('uq_assets_name_version_key'))
    )
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.create_index('ix_assets_asset_type_created_at', ['asset_type', 'created_at'], unique=False)
        batch_op.create_index('ix_assets_compliance_status_created_at', ['compliance_status', 'created_at'], unique=False)
        batch_op.create_index('ix_assets_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_assets_created_by', ['created_by'], unique=False)
        batch_op.create_index('ix_assets_name_version_sort', ['name', 'version_sort'], unique=False)
        batch_op.create_index('ix_assets_provenance_author', ['provenance_author'], unique=False)
        batch_op.create_index('ix_assets_size_bytes_id', ['size_bytes', 'id'], unique=False)
        batch_op.create_index('ix_assets_status_created_at', ['status', 'created_at'], unique=False)
        batch_op.create_index('ix_assets_updated_at_id', ['updated_at', 'id'], unique=False)
        batch_op.create_index('ix_assets_version_sort_id', ['version_sort', 'id'], unique=False)

    op.create_table('asset_dependencies',
    sa.Column('asset_id', sa.String(length=26), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('ref_id', sa.String(length=26), nullable=True),
    sa.Column('name', sa.String(length=129), nullable=True),
    sa.Column('asset_type', sa.String(length=32), nullable=True),
    sa.Column('version_range', sa.String(length=256), nullable=True),
    sa.Column('resolved_id', sa.String(length=26), nullable=True),
    sa.Column('resolved_version', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_asset_dependencies_asset_id_assets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['resolved_id'], ['assets.id'], name=op.f('fk_asset_dependencies_resolved_id_assets')),
    sa.PrimaryKeyConstraint('asset_id', 'position', name=op.f('pk_asset_dependencies'))
    )
    with op.batch_alter_table('asset_dependencies', schema=None) as batch_op:
        batch_op.create_index('ix_asset_dependencies_resolved_id', ['resolved_id'], unique=False)

    op.create_table('asset_tags',
    sa.Column('asset_id', sa.String(length=26), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_asset_tags_asset_id_assets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('asset_id', 'tag', name=op.f('pk_asset_tags'))
    )
    with op.batch_alter_table('asset_tags', schema=None) as batch_op:
        batch_op.create_index('ix_asset_tags_tag_asset_id', ['tag', 'asset_id'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('asset_id', sa.String(length=26), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('error', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_by', sa.String(length=64), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_jobs_asset_id_assets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_asset_id_created_at', ['asset_id', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_jobs_status_created_at', ['status', 'created_at'], unique=False)

    op.create_table('job_steps',
    sa.Column('job_id', sa.String(length=26), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_steps_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'position', name=op.f('pk_job_steps'))
    )
    


def downgrade():
    
    op.drop_table('job_steps')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_created_at')
        batch_op.drop_index('ix_jobs_created_at_id')
        batch_op.drop_index('ix_jobs_asset_id_created_at')

    op.drop_table('jobs')
    with op.batch_alter_table('asset_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_asset_tags_tag_asset_id')

    op.drop_table('asset_tags')
    with op.batch_alter_table('asset_dependencies', schema=None) as batch_op:
        batch_op.drop_index('ix_asset_dependencies_resolved_id')

    op.drop_table('asset_dependencies')
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.drop_index('ix_assets_version_sort_id')
        batch_op.drop_index('ix_assets_updated_at_id')
        batch_op.drop_index('ix_assets_status_created_at')
        batch_op.drop_index('ix_assets_size_bytes_id')
        batch_op.drop_index('ix_assets_provenance_author')
        batch_op.drop_index('ix_assets_name_version_sort')
        batch_op.drop_index('ix_assets_created_by')
        batch_op.drop_index('ix_assets_created_at_id')
        batch_op.drop_index('ix_assets_compliance_status_created_at')
        batch_op.drop_index('ix_assets_asset_type_created_at')

    op.drop_table('assets')
    op.drop_table('users')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_published_at_id')
        batch_op.drop_index('ix_events_asset_id_id')

    op.drop_table('events')
    op.drop_table('asset_names')
    
