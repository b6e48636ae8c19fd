"""Reference kidney masks for the real CTs in ../shared/data, and scoring any model against them.

``build`` rebuilds the masks (semi-automatic, parameters in ``params.json``; see README.md),
``score`` runs ``segment()`` with a model card on each real CT and compares, ``overlays`` renders the
PNG sheets the masks were checked on.
"""
