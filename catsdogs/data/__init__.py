"""Getting and reading photos: download, split (with its checks and staging), decoding, the cache and batches."""
