"""zchunk."""
