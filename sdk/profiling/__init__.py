"""Measuring: the profiler (this host, every backend) and the report writer."""
