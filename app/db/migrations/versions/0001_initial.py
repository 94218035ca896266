# ruff: noqa: E501
"""The first schema: every table as it was before migrations existed (commit 579d23c).

Revision ID: 0001
Revises:
Create Date: 2026-12-03

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('mime', sa.String(length=40), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('pretrained', sa.String(length=1000), nullable=True),
    sa.Column('embed_dim', sa.Integer(), nullable=False),
    sa.Column('image_size', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('slug')
    )
    op.create_table('analyses',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('image_sha256', sa.String(length=64), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['image_sha256'], ['blobs.sha256'], ),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_analyses_created_at'), 'analyses', ['created_at'], unique=False)
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset', sa.String(length=500), nullable=False),
    sa.Column('key', sa.String(length=1000), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('caption', sa.Text(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('thumb_sha256', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['thumb_sha256'], ['blobs.sha256'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset', 'key')
    )
    op.create_table('layers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('hook', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('n_units', sa.Integer(), nullable=False),
    sa.Column('grid_h', sa.Integer(), nullable=False),
    sa.Column('grid_w', sa.Integer(), nullable=False),
    sa.Column('is_last', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'name')
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=40), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('params_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('progress', sa.JSON(), nullable=False),
    sa.Column('state', sa.LargeBinary(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'stage', 'params_hash')
    )
    op.create_table('activation_samples',
    sa.Column('layer_id', sa.Integer(), nullable=False),
    sa.Column('image_ids', sa.JSON(), nullable=False),
    sa.Column('n_images', sa.Integer(), nullable=False),
    sa.Column('n_units', sa.Integer(), nullable=False),
    sa.Column('values', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['layer_id'], ['layers.id'], ),
    sa.PrimaryKeyConstraint('layer_id')
    )
    op.create_table('concept_profiles',
    sa.Column('layer_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('concepts', sa.JSON(), nullable=False),
    sa.Column('image_counts', sa.JSON(), nullable=False),
    sa.Column('image_means', sa.LargeBinary(), nullable=False),
    sa.Column('word_values', sa.LargeBinary(), nullable=False),
    sa.Column('word_blobs', sa.JSON(), nullable=False),
    sa.Column('image_tags', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['layer_id'], ['layers.id'], ),
    sa.PrimaryKeyConstraint('layer_id')
    )
    op.create_table('directions',
    sa.Column('layer_id', sa.Integer(), nullable=False),
    sa.Column('n_units', sa.Integer(), nullable=False),
    sa.Column('embed_dim', sa.Integer(), nullable=False),
    sa.Column('values', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['layer_id'], ['layers.id'], ),
    sa.PrimaryKeyConstraint('layer_id')
    )
    op.create_table('neurons',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('layer_id', sa.Integer(), nullable=False),
    sa.Column('unit', sa.Integer(), nullable=False),
    sa.Column('mean', sa.Float(), nullable=False),
    sa.Column('std', sa.Float(), nullable=False),
    sa.Column('max', sa.Float(), nullable=False),
    sa.Column('multimodality', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['layer_id'], ['layers.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('layer_id', 'unit')
    )
    op.create_index(op.f('ix_neurons_layer_id'), 'neurons', ['layer_id'], unique=False)
    op.create_table('feature_visualizations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.Column('objective', sa.Double(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['blob_sha256'], ['blobs.sha256'], ),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('neuron_id', 'kind', 'index')
    )
    op.create_index(op.f('ix_feature_visualizations_neuron_id'), 'feature_visualizations', ['neuron_id'], unique=False)
    op.create_table('labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=300), nullable=False),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('score', sa.Double(), nullable=True),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('neuron_id', 'source', 'label')
    )
    op.create_index('ix_labels_label', 'labels', ['label'], unique=False)
    op.create_index(op.f('ix_labels_neuron_id'), 'labels', ['neuron_id'], unique=False)
    op.create_table('neuron_words',
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('word', sa.String(length=200), nullable=False),
    sa.Column('value', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], ),
    sa.PrimaryKeyConstraint('neuron_id', 'rank')
    )
    op.create_table('top_examples',
    sa.Column('neuron_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.Double(), nullable=False),
    sa.Column('heatmap', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ),
    sa.ForeignKeyConstraint(['neuron_id'], ['neurons.id'], ),
    sa.PrimaryKeyConstraint('neuron_id', 'rank')
    )
    op.create_index(op.f('ix_top_examples_image_id'), 'top_examples', ['image_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_top_examples_image_id'), table_name='top_examples')
    op.drop_table('top_examples')
    op.drop_table('neuron_words')
    op.drop_index(op.f('ix_labels_neuron_id'), table_name='labels')
    op.drop_index('ix_labels_label', table_name='labels')
    op.drop_table('labels')
    op.drop_index(op.f('ix_feature_visualizations_neuron_id'), table_name='feature_visualizations')
    op.drop_table('feature_visualizations')
    op.drop_index(op.f('ix_neurons_layer_id'), table_name='neurons')
    op.drop_table('neurons')
    op.drop_table('directions')
    op.drop_table('concept_profiles')
    op.drop_table('activation_samples')
    op.drop_table('runs')
    op.drop_table('layers')
    op.drop_table('images')
    op.drop_index(op.f('ix_analyses_created_at'), table_name='analyses')
    op.drop_table('analyses')
    op.drop_table('models')
    op.drop_table('blobs')
