"""SQL over recordings with DuckDB: the views, ``qmprr query``, the Parquet export, the catalog.

See ``docs/query.md`` for the views' columns and example questions.
"""
