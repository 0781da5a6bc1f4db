"""Data layer: records, the synthetic world, LMDB stores, importers. Imports nothing else of unitok."""
