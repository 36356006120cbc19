"""Training utilities: corpus building, tokenizer training and text metrics for Cola models."""
