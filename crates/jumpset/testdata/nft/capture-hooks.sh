#!/bin/bash
# Captures the hook dump (NFNL_SUBSYS_HOOK, the netlink interface behind `nft list hooks`)
# into crates/jumpset/testdata/nft/*.bin, the way capture.sh captures the rest.
# Run as root on a host with nft 1.0.6, strace and python3; everything runs inside a
# throwaway network namespace (unshare -n); the host is untouched.
#
#   tx_gethooks_prerouting  nft list hooks ip: the request for hook 0 (prerouting) of
#                           family ip — NFNL_MSG_HOOK_GET (0x0c00), REQUEST|DUMP,
#                           NFNLA_HOOK_HOOKNUM = 0 (big-endian)
#   rx_gethooks_einval      the kernel's answer to it on a kernel built without
#                           CONFIG_NETFILTER_NETLINK_HOOK (this machine's 6.18): NLMSG_ERROR
#                           -EINVAL, from nfnetlink itself (no such subsystem)
#
# On a kernel with the hook dump, the replies to the same request are NFNL_MSG_HOOK_GET
# messages (rx_gethooks_*.bin would be written by the same script); see
# codec/hook.rs for the layout they are decoded with.
set -euo pipefail
OUT=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
export W
unshare -n bash -euo pipefail -c '
T() { name=$1; shift; strace -f -e trace=sendmsg,recvmsg,sendto,recvfrom -e read=all -e write=all -s 0 -o "$W/$name.strace" "$@"; }
printf "table ip t {\n chain pre {\n type filter hook prerouting priority -150;\n }\n chain nat {\n type nat hook prerouting priority dstnat;\n }\n}\n" | nft -f -
T hooks nft list hooks ip || true
'
python3 - "$W" "$OUT" <<'PY'
import re, sys, os
W, OUT = sys.argv[1], sys.argv[2]
def calls(name):
    out, cur = [], None
    for line in open(os.path.join(W, name + ".strace")):
        m = re.match(r"^\d+\s+(\w+)\((\d+),", line)
        if m:
            cur = {"call": m.group(1), "data": bytearray()}
            out.append(cur)
            continue
        m = re.match(r"^\s*\|\s*[0-9a-f]{5}\s+((?:[0-9a-f]{2}\s+)+)", line)
        if m and cur is not None:
            cur["data"] += bytes.fromhex(m.group(1).replace(" ", ""))
    return out
def msgs(d):
    """(nlmsg_type, nlmsg_flags, nfgen_family) of each message in a datagram."""
    off, out = 0, []
    while off + 16 <= len(d):
        n = int.from_bytes(d[off:off + 4], "little")
        fam = d[off + 16] if off + 17 <= len(d) else None
        out.append((int.from_bytes(d[off + 4:off + 6], "little"), int.from_bytes(d[off + 6:off + 8], "little"), fam))
        if n < 16:
            break
        off += (n + 3) & ~3
    return out
def pick(trace, out, call, want, nth=0):
    hits = [c["data"] for c in calls(trace) if c["call"] == call and want(c["data"], msgs(c["data"]))]
    data = hits[nth]
    with open(os.path.join(OUT, out + ".bin"), "wb") as f:
        f.write(data)
# The request for family ip (2), hook 0: its NFNLA_HOOK_HOOKNUM is the last 4 bytes.
req = lambda d, m: m == [(0x0c00, 0x301, 2)] and d[-4:] == b"\0\0\0\0"
pick("hooks", "tx_gethooks_prerouting", "sendto", req)
# The answer to it: an NLMSG_ERROR embedding that request.
ans = lambda d, m: m and m[0][0] == 2 and d[20 + 4:20 + 6] == b"\x00\x0c" and d[20 + 16] == 2 and d[-4:] == b"\0\0\0\0"
pick("hooks", "rx_gethooks_einval", "recvmsg", ans)
PY
rm -rf "$W"
