"""What runs leave on disk: atomic files and cache entries, run directories, result records."""
