"""Device profiles, the host probe, the planner and its cost model, the profiler and report writer."""
