"""Text in, token ids out: tokenizers, text sources, prepared corpora, and the data argument."""
