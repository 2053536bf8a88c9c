"""Device profiles by name: the bundled TOML files, a TOML path, or `host` (probed live).

Above both `profile.py` (the data and its TOML reader) and `host.py` (the probe, which builds a profile), so
neither imports the other's module.
"""

from __future__ import annotations

from pathlib import Path

from edgecpm.device_profiles.host import host_profile
from edgecpm.device_profiles.profile import DeviceProfile, load_bundled_profile


def load_profile(name: str | Path) -> DeviceProfile:
    """A bundled profile by name, `host` (probed live), or a path to a TOML profile file."""
    if str(name) == "host":
        return host_profile()
    return load_bundled_profile(name)
