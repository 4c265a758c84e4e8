#!/bin/sh
# The root image's /sbin/init: a node's first boot as cloud-init would do it over
# NoCloud (meta-data, user-data, vendor-data), then phone-home, a marker, power off.
export PATH=/bin:/sbin
/bin/busybox --install -s /bin 2>/dev/null

say() { echo "bootd-rootfs: $*"; }
fail() {
    echo "BOOTD-E2E-FAIL: rootfs: $*"
    poweroff -f
    sleep 30
}
say "running from $(grep ' / ' /proc/mounts | cut -d' ' -f1-3)"

CI_URL=""
CI_SECURE=""
CI_TOKEN=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ds=nocloud*\;s=*) CI_URL="${arg#*;s=}" ;;
        ds=nocloud*\;seedfrom=*) CI_URL="${arg#*;seedfrom=}" ;;
        ochami_ci_url=*) CI_URL="${arg#ochami_ci_url=}" ;;
        ochami_ci_url_secure=*) CI_SECURE="${arg#ochami_ci_url_secure=}" ;;
        bootd_ci_token=*) CI_TOKEN="${arg#bootd_ci_token=}" ;;
    esac
done
[ -n "$CI_URL" ] || fail "no cloud-init URL (ds=nocloud;s= or ochami_ci_url=) on the command line"
case "$CI_URL" in */) ;; *) CI_URL="$CI_URL/" ;; esac

mkdir -p /run/ci
for f in meta-data user-data vendor-data; do
    wget -q -O "/run/ci/$f" "$CI_URL$f" || fail "GET $CI_URL$f"
    say "$f: $(wc -c < "/run/ci/$f") bytes"
done
sed 's/^/bootd-rootfs: meta-data | /' /run/ci/meta-data | head -20
ID=$(sed -n 's/^instance-id: *//p' /run/ci/meta-data | head -1 | tr -d "\"' \r")
HOST=$(sed -n 's/^local-hostname: *//p' /run/ci/meta-data | head -1 | tr -d "\"' \r")
[ -n "$ID" ] || fail "meta-data has no instance-id"
[ -n "$HOST" ] && hostname "$HOST"

if [ -n "$CI_SECURE" ] && [ -n "$CI_TOKEN" ]; then
    case "$CI_SECURE" in */) ;; *) CI_SECURE="$CI_SECURE/" ;; esac
    if wget -q -O /run/ci/secure-meta-data --header "Authorization: Bearer $CI_TOKEN" \
        "${CI_SECURE}meta-data"; then
        say "secure meta-data: $(wc -c < /run/ci/secure-meta-data) bytes"
    else
        say "secure meta-data refused"
    fi
fi

wget -q -O /run/ci/phone-home --post-data "instance_id=$ID&hostname=$HOST" \
    "${CI_URL}phone-home/$ID" || fail "POST ${CI_URL}phone-home/$ID"
say "phoned home as $ID ($HOST)"
echo "BOOTD-E2E-OK instance-id=$ID hostname=$HOST"
sync
poweroff -f
sleep 30
