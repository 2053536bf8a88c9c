"""Device profiles, the host probe, the planner and its cost model, the profiler and report writer."""

from .profile import DeviceProfile, Fact, list_profiles, load_profile, profile_names

__all__ = ["DeviceProfile", "Fact", "list_profiles", "load_profile", "profile_names"]
