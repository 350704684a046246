#!/usr/bin/env bash
# Regenerates the report fixtures of the Go package's decoding tests from the real
# `jumpset` command, each scenario in a network namespace of its own (unshare --net):
#
#   go/testdata/capture.sh [path/to/jumpset]     (as root; default target/debug/jumpset)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/debug/jumpset}
data=$root/crates/jumpset/testdata
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

harvester='[[chain]]
table = "nat"
chain = "PREROUTING"
  [[chain.jump]]
  target = "OVN-PREROUTING"
  comment = "kube-ovn prerouting rules"
  after = ["cali-PREROUTING"]
  before = ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]
  [[chain.jump]]
  target = "AGENT-PREROUTING"
  comment = "agent prerouting rules"
  after = ["KUBE-SERVICES"]'

# One chain, one family: a delete and an insert (with its new handle).
printf 'backend = "nft"\n%s\n' "$harvester" >"$tmp/apply.toml"
unshare --net bash -c "iptables-nft-restore <'$data/harvester-broken.rules' && '$bin' apply --config '$tmp/apply.toml' --json" \
    >"$here/apply.json"

# One chain, both families (ip broken, ip6 empty): check, drift in each.
printf 'backend = "nft"\nfamilies = ["ip", "ip6"]\n%s\n' "$harvester" >"$tmp/check.toml"
unshare --net bash -c "iptables-nft-restore <'$data/harvester-broken.rules' && { '$bin' check --config '$tmp/check.toml' --json; true; }" \
    >"$here/check-families.json"

# Two chains: status, with a conflict (kube-proxy's jump ahead of Calico's).
conflict='*nat
:cali-PREROUTING - [0:0]
:OVN-PREROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING
COMMIT'
printf 'backend = "nft"\n%s\n[[chain]]\ntable = "nat"\nchain = "OUTPUT"\n  [[chain.jump]]\n  target = "OVN-OUTPUT"\n  comment = "kube-ovn output rules"\n' \
    "$harvester" >"$tmp/status.toml"
printf '%s\n' "$conflict" >"$tmp/conflict.rules"
unshare --net bash -c "iptables-nft-restore <'$tmp/conflict.rules' && '$bin' status --config '$tmp/status.toml' --json" \
    >"$here/status-chains.json"

# The conflict applied: exit 5, the report with its conflicts and blocking rules.
unshare --net bash -c "iptables-nft-restore <'$tmp/conflict.rules' && { '$bin' apply --config '$tmp/apply.toml' --json; test \$? = 5; }" \
    >"$here/apply-conflict.json"

# One family failing: the target exists in ip only and create_chain = false.
printf 'backend = "nft"\nfamilies = ["ip", "ip6"]\n[[chain]]\ntable = "nat"\nchain = "PREROUTING"\n  [[chain.jump]]\n  target = "ONLY-V4"\n  comment = "v4 only"\n  create_chain = false\n' \
    >"$tmp/error.toml"
unshare --net bash -c "iptables-nft -t nat -N ONLY-V4 && { '$bin' apply --config '$tmp/error.toml' --json; test \$? = 4; }" \
    >"$here/apply-family-error.json"

for f in apply check-families status-chains apply-conflict apply-family-error; do
    python3 -m json.tool "$here/$f.json" >"$tmp/x" && mv "$tmp/x" "$here/$f.json"
done
echo "captured into $here"
