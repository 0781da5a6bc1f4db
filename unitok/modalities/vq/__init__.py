"""VQ-VAE tokenizers: ``config`` (sizes, depth bins, map kinds), ``networks``, ``tokenizer`` (encode/decode, assets)."""
