"""Device profile files, their validation, the host probe and `edgecpm devices`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from edgecpm.cli import main
from edgecpm.device_profiles import list_profiles, load_profile, profile_names
from edgecpm.device_profiles.host import cpu_info, memory_info, probe, profile_from_probe
from edgecpm.device_profiles.profile import PROFILE_DIR
from edgecpm.errors import EdgecpmError

REQUIRED = [
    "snapdragon-8-gen3",
    "snapdragon-8-elite",
    "tensor-g3",
    "apple-a17-pro",
    "raspberry-pi-5",
    "jetson-orin-nano-8gb",
    "jetson-orin-nano-super",
    "jetson-agx-orin-64gb",
    "rtx-4090",
    "rtx-a6000",
    "h100",
    "h200",
    "apple-m2",
    "x86-64-laptop",
]


def test_every_required_device_has_a_profile_with_sourced_numbers():
    profiles = {p.name: p for p in list_profiles()}
    assert set(REQUIRED) <= set(profiles)
    for p in profiles.values():
        facts = [p.memory_gib, p.app_share, p.bandwidth_spec_gbs, p.bandwidth_measured_gbs, *p.compute.values()]
        for fact in facts:
            assert fact.source.strip()
            assert (fact.value is None) == (fact.status == "unknown")
        assert p.backends and p.threads <= p.cpu_cores
        assert p.isa or p.cuda_cc


def test_reference_numbers_are_transcribed():
    """Spot-check against the sources in docs/device-sources.md (typed from the document)."""
    assert load_profile("snapdragon-8-gen3").bandwidth_spec_gbs.value == 76.8
    assert load_profile("snapdragon-8-elite").bandwidth_spec_gbs.value == 84.8
    assert load_profile("jetson-agx-orin-64gb").bandwidth_spec_gbs.value == 204.8
    assert load_profile("rtx-4090").bandwidth_spec_gbs.value == 1008
    assert load_profile("rtx-a6000").compute["int8_gops"].value == 309_700
    assert load_profile("apple-a17-pro").bandwidth_measured_gbs.value == 22
    assert load_profile("tensor-g3").bandwidth_spec_gbs.value is None
    assert load_profile("jetson-orin-nano-8gb").cuda_cc == "8.7"
    assert "i8mm" in load_profile("snapdragon-8-gen3").isa and "i8mm" not in load_profile("raspberry-pi-5").isa


def test_unknown_device_name_is_a_clear_error():
    with pytest.raises(EdgecpmError, match=r"unknown device 'snapdragon-8-gen33' \(did you mean 'snapdragon-8-gen3'"):
        load_profile("snapdragon-8-gen33")
    assert main(["plan", "minicpm4-0.5b", "--device", "pixel-99"]) == 2


GOOD = (PROFILE_DIR / "raspberry-pi-5.toml").read_text()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace("[memory]", "[memory"), "not valid TOML"),
        (lambda s: s.replace('kind = "sbc"', 'kind = "toaster"'), "field 'kind'"),
        (lambda s: re.sub(r"total_gib = .*", "", s), "field 'memory.total_gib'"),
        (
            lambda s: s.replace('status = "derived", source = "LPDDR4X', 'status = "guessed", source = "LPDDR4X'),
            "field 'bandwidth.spec_gbs.status'",
        ),
        (lambda s: s.replace("value = 0.8,", "value = 1.5,"), "field 'memory.app_share'"),
        (lambda s: s.replace("value = 17,", "value = -17,"), "field 'bandwidth.spec_gbs.value'"),
        (lambda s: s.replace('"torch"]', '"tensorrt"]'), "field 'backends'"),
        (lambda s: s.replace("threads = 4", "threads = 9"), "cpu.threads"),
        (lambda s: s.replace('source = "4 cores', 'source = "", x = "'), "compute.fp32_gflops.source"),
        (lambda s: s.replace('name = "raspberry-pi-5"', 'name = "pi"'), "expected the file name"),
    ],
)
def test_malformed_profile_files_name_the_problem(tmp_path, edit, message):
    path = tmp_path / "raspberry-pi-5.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(EdgecpmError, match=re.escape(message)) as info:
        load_profile(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_custom_profile_file_can_be_planned_against(tmp_path):
    path = tmp_path / "my-board.toml"
    path.write_text(GOOD.replace('name = "raspberry-pi-5"', 'name = "my-board"'))
    assert load_profile(str(path)).name == "my-board"
    assert main(["plan", "minicpm4-0.5b", "--device", str(path), "--json"]) == 0


def test_host_probe_matches_the_os(tmp_path):
    cpu, mem = cpu_info(), memory_info()
    assert cpu["cores"] == min(len(os.sched_getaffinity(0)), cpu["cores"]) >= 1
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    assert mem["total_bytes"] <= total_kb * 1024
    flags = set(re.search(r"^(?:flags|Features)\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    assert ("avx2" in cpu["isa"]) == ("avx2" in flags)
    data = probe(measure=True)
    assert 0.1 < data["bandwidth"]["read_gbs"] < 5000 and 0.1 < data["bandwidth"]["copy_gbs"] < 5000
    assert data["compute"]["fp32_gflops"] > 0.1
    prof = profile_from_probe(data, backends=["torch"])
    assert prof.name == "host" and prof.bandwidth_measured_gbs.status == "measured"
    assert abs(prof.memory_gib.value * 2**30 - mem["total_bytes"]) < 2**20


def test_devices_command_lists_every_profile(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in profile_names():
        if name != "host":
            assert name in out
    assert main(["devices", "--show", "jetson-agx-orin-64gb", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["bandwidth_spec_gbs"]["value"] == 204.8 and "DS-10662-001" in d["bandwidth_spec_gbs"]["source"]
