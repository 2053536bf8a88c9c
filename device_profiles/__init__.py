"""Device profiles, the host probe, the planner and its cost model, the profiler and report writer."""

from edgecpm.device_profiles.catalog import load_profile
from edgecpm.device_profiles.profile import DeviceProfile, Fact, list_profiles, profile_names

__all__ = ["DeviceProfile", "Fact", "list_profiles", "load_profile", "profile_names"]
