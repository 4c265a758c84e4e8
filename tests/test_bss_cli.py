"""`bootd bss` against a running bootd: the seed's bss.yaml, scripts, operator templates."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bootd.yamlio import safe_load
from tests.helpers import REPO, BootdProcess, base_config, bootd_argv, write_config

SEED: dict[str, Any] = safe_load((REPO / "config" / "bss.yaml").read_text())


def bootd(proc: BootdProcess, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = bootd_argv("--url", proc.url, "--token-file", str(tmp / "api-token"), *args)
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=30)


def test_seed_bss_yaml_renders_matching_script(bootd_proc: BootdProcess, tmp_path: Path) -> None:
    r = bootd(bootd_proc, tmp_path, "bss", "add", "--payload", str(REPO / "config" / "bss.yaml"))
    assert r.returncode == 0, r.stderr
    r = bootd(bootd_proc, tmp_path, "bss", "script", "--mac", "aa:bb:cc:dd:ee:ff")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "#!ipxe"
    kernel = next(ln for ln in lines if ln.startswith("kernel "))
    words = kernel.split()
    assert words[:4] == ["kernel", "--name", "kernel", SEED["kernel"]]
    assert words[4] == "initrd=initrd"
    assert " ".join(words[5 : 5 + len(SEED["params"].split())]) == SEED["params"]
    assert f"initrd --name initrd {SEED['initrd']} || goto boot_retry" in lines
    # The same over plain HTTP, as iPXE fetches it.
    with urllib.request.urlopen(bootd_proc.url + "/boot/v1/bootscript?mac=AA-BB-CC-DD-EE-FF") as f:
        served = f.read().decode().rstrip("\n")
    # Each render mints a fresh per-boot cloud-init token; everything else is identical.
    assert "bootd_ci_token=" in served
    tok = re.compile(r"bootd_ci_token=\S+")
    assert tok.sub("T", served) == tok.sub("T", r.stdout.rstrip("\n"))
    # add again is refused; set (PUT) replaces; update (PATCH) changes one field; get shows it.
    r = bootd(bootd_proc, tmp_path, "bss", "add", "--payload", str(REPO / "config" / "bss.yaml"))
    assert r.returncode != 0 and "409" in r.stderr
    patch = tmp_path / "p.json"
    patch.write_text('{"macs": ["aa:bb:cc:dd:ee:ff"], "params": "quiet"}')
    assert bootd(bootd_proc, tmp_path, "bss", "update", "--payload", str(patch)).returncode == 0
    r = bootd(bootd_proc, tmp_path, "bss", "get", "--mac", "aa:bb:cc:dd:ee:ff")
    assert '"params": "quiet"' in r.stdout and SEED["kernel"] in r.stdout
    assert bootd(bootd_proc, tmp_path, "bss", "set", "--payload", str(patch)).returncode == 0
    r = bootd(bootd_proc, tmp_path, "bss", "get")
    assert SEED["kernel"] not in r.stdout
    r = bootd(bootd_proc, tmp_path, "bss", "delete", "--mac", "aa:bb:cc:dd:ee:ff")
    assert r.returncode == 0 and "deleted 1" in r.stdout
    assert bootd_proc.get_json("/boot/v1/bootparameters") == []
    # A YAML list sends one request per entry; MACs stay strings (no base-60 surprises).
    many = tmp_path / "many.yaml"
    many.write_text("- {macs: [52:54:00:00:00:01], kernel: a}\n- {nids: [3], kernel: b}\n")
    r = bootd(bootd_proc, tmp_path, "bss", "add", "--payload", str(many))
    assert r.returncode == 0, r.stderr
    got = bootd_proc.get_json("/boot/v1/bootparameters")
    assert {e["kernel"]: (e.get("macs"), e.get("nids")) for e in got} == {
        "a": (["52:54:00:00:00:01"], None),
        "b": (None, [3]),
    }


def test_operator_template(tmp_path: Path) -> None:
    tpl = tmp_path / "script.j2"
    tpl.write_text("#!ipxe\nkernel {{ kernel_url }} {{ params }}\n# {{ mac }} & <{{ retry }}>\n")
    cfg = base_config(tmp_path, http={"script_template": str(tpl)})
    proc = BootdProcess(write_config(tmp_path, cfg), cfg)
    try:
        proc.wait_ready()
        assert (
            bootd(
                proc, tmp_path, "bss", "add", "--payload", str(REPO / "config" / "bss.yaml")
            ).returncode
            == 0
        )
        r = bootd(proc, tmp_path, "bss", "script", "--mac", "aa:bb:cc:dd:ee:ff")
        assert r.stdout.splitlines()[1].startswith(
            f"kernel {SEED['kernel']} initrd=initrd nomodeset"
        )
        assert "# aa:bb:cc:dd:ee:ff & <0>" in r.stdout
        # An edited template with an undefined variable: a 500 problem naming it, not a crash.
        tpl.write_text("#!ipxe\n{{ kernel_uri }}\n")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(proc.url + "/boot/v1/bootscript?mac=aa:bb:cc:dd:ee:ff")
        assert err.value.code == 500 and "kernel_uri" in err.value.read().decode()
        assert proc.get_json("/healthz")["status"] == "ok"
    finally:
        proc.stop()


def test_template_undefined_variable_fails_startup(tmp_path: Path) -> None:
    tpl = tmp_path / "bad.j2"
    tpl.write_text("#!ipxe\nkernel {{ kernel_url }} {{ no_such_var }}\n")
    cfg = base_config(tmp_path, http={"script_template": str(tpl)})
    r = subprocess.run(
        bootd_argv("serve", "--config", str(write_config(tmp_path, cfg))),
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert r.returncode == 1
    assert "http.script_template" in r.stderr and "no_such_var" in r.stderr
    assert "Traceback" not in r.stderr
