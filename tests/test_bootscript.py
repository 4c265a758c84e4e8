"""Boot-script rendering (pure) and image-stage classification."""

from __future__ import annotations

import re

import jinja2
import pytest

from bootd.boot.bootparams import BootData, parse_bootparams
from bootd.boot.script import (
    RetryPolicy,
    ScriptRequest,
    compile_template,
    render_script,
    stage_for_image,
)
from bootd.yamlio import safe_load
from tests.helpers import REPO

BASE = "http://10.0.0.1:8080"
POLICY = RetryPolicy(retries=4, base=2.0, cap=20.0)


def req(data: BootData | None, **kw: object) -> ScriptRequest:
    args: dict[str, object] = {
        "base_url": BASE,
        "mac": "aa:bb:cc:dd:ee:ff",
        "name": None,
        "nid": None,
        "retry": 0,
        "arch": None,
        "data": data,
        "source": "mac aa:bb:cc:dd:ee:ff",
        "policy": POLICY,
        "jitter": 0.0,
    }
    args.update(kw)
    return ScriptRequest(**args)  # type: ignore[arg-type]


def seed() -> BootData:
    return parse_bootparams(safe_load((REPO / "config" / "bss.yaml").read_text())).data()


def test_seed_script_matches_bss_shape() -> None:
    d = seed()
    lines = render_script(req(d)).splitlines()
    assert lines[0] == "#!ipxe"
    kernel = next(line for line in lines if line.startswith("kernel "))
    assert kernel.startswith(f"kernel --name kernel {d.kernel} initrd=initrd {d.params} ")
    assert kernel.endswith(" BOOTIF=01-aa-bb-cc-dd-ee-ff || goto boot_retry")
    # The seed names its own cloud-init (ochami_ci_url=): no second datasource.
    assert "ds=" not in kernel
    assert f"initrd --name initrd {d.initrd} || goto boot_retry" in lines
    assert "boot || goto boot_retry" in lines


def test_relative_paths_served_by_bootd_and_datasource_added() -> None:
    d = BootData(
        kernel="alma/vmlinuz", initrd="/alma/initramfs.img", params="console=ttyS0 BOOTIF=x"
    )
    text = render_script(req(d, ci_token="tok123"))
    assert f"kernel --name kernel {BASE}/images/alma/vmlinuz initrd=initrd console=ttyS0" in text
    assert f"initrd --name initrd {BASE}/images/alma/initramfs.img" in text
    assert f"ds=nocloud-net;s={BASE}/cloud-init/" in text
    assert "BOOTIF=x" in text and "BOOTIF=01-" not in text
    assert text.split(" || goto")[0].endswith("bootd_ci_token=tok123")


def test_initrd_param_replaced_not_duplicated() -> None:
    d = BootData(kernel="k", initrd="i", params="initrd=old quiet")
    kernel = render_script(req(d)).splitlines()[2]
    assert kernel.count("initrd=") == 1 and "initrd=initrd quiet" in kernel


def test_backoff_is_exponential_bounded_and_ends_in_exit() -> None:
    d = seed()
    delays = []
    for n in range(POLICY.retries):
        text = render_script(req(d, retry=n, jitter=0.999))
        delays.append(int(re.search(r"^sleep (\d+)$", text, re.M).group(1)))  # type: ignore[union-attr]
        assert f"bootscript?mac=aa:bb:cc:dd:ee:ff&retry={n + 1} || exit 1" in text
    assert delays == [2, 4, 8, 16]
    assert POLICY.delay(50, 0.999) == 20  # capped
    assert POLICY.delay(3, 0.0) == 16 // 2  # jitter spreads down to half
    last = render_script(req(d, retry=POLICY.retries))
    assert "chain" not in last and "sleep" not in last
    assert last.rstrip().endswith("exit 1")


def test_unknown_node_says_why_and_retries() -> None:
    text = render_script(req(None, source="MAC 11:22:33:44:55:66", mac="11:22:33:44:55:66"))
    assert "kernel" not in text
    assert "echo bootd: no boot parameters for MAC 11:22:33:44:55:66" in text
    assert (
        "chain --autofree http://10.0.0.1:8080/boot/v1/bootscript?mac=11:22:33:44:55:66&retry=1"
        in text
    )
    no_kernel = render_script(req(BootData(params="quiet")))
    assert "have no kernel" in no_kernel


def test_template_override_is_not_escaped_and_strict() -> None:
    t = compile_template(
        "#!ipxe\nkernel {{ kernel_url }} {{ params }}\n{% if not found %}exit{% endif %}\n"
    )
    d = BootData(kernel="http://h/k?a=1&b=<2>", params="x='y' console=ttyS0,115200")
    out = render_script(req(d), t)
    assert "kernel http://h/k?a=1&b=<2> x='y' console=ttyS0,115200" in out
    with pytest.raises(jinja2.UndefinedError, match="nope"):
        render_script(req(d), compile_template("{{ nope }}"))
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_script(req(d), compile_template("{{ params.__class__.__mro__ }}"))


@pytest.mark.parametrize(
    ("rel", "stage"),
    [
        ("alma/vmlinuz", "kernel"),
        ("alma/initramfs.img", "initrd"),
        ("alma/rootfs", "rootfs"),
        ("other/vmlinuz-6.1", "kernel"),
        ("other/image.squashfs", "rootfs"),
        ("other/README", None),
    ],
)
def test_stage_for_image(rel: str, stage: str | None) -> None:
    assert stage_for_image(rel, seed()) == stage


def test_stage_by_boot_params_beats_names() -> None:
    d = BootData(kernel="boot/a.bin", initrd="boot/b.bin", params="root=live:/images/boot/c.bin")
    assert [stage_for_image(f"boot/{x}.bin", d) for x in "abc"] == ["kernel", "initrd", "rootfs"]


@pytest.mark.parametrize("retry", [0, 3, 4])
@pytest.mark.parametrize(
    "data",
    [None, BootData(params="quiet"), BootData(kernel="k"), BootData(kernel="k", initrd="i")],
)
def test_example_template_renders_like_the_builtin(retry: int, data: BootData | None) -> None:
    t = compile_template((REPO / "config" / "bootscript.ipxe.j2").read_text())
    r = req(data, retry=retry, jitter=0.3)
    assert render_script(r, t) == render_script(r)
