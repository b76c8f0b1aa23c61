"""GLUE task loading and metrics."""
