"""Training data: splits, samplers that choose patches, and the loader that crops them."""
