#!/usr/bin/env bash
# Fetches the policy.networking.k8s.io CRDs the admin-tier egress engines are
# tested against (tests/enforce.rs, tests/policy_crds.rs, tests/deploy.rs)
# from the Go module proxy (sigs.k8s.io/network-policy-api; no YAML from
# upstream is committed here) and copies just those files into
#   target/tools/policy-crds/<version>/<channel>/<file>
#  - AdminNetworkPolicy v1alpha1, experimental channel, at the version
#    kube-network-policies (hack/install-kube-network-policies.sh) pins: the
#    enforcer reads that API, and the `networks` peer the controller writes
#    is in that version's experimental channel only;
#  - ClusterNetworkPolicy v1beta1/v1alpha2 at v0.3.1, standard and
#    experimental channels.
# Idempotent: does nothing when these versions are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# What kube-network-policies v0.8.0's go.mod requires (checked below).
ANP_VERSION=v0.1.6-0.20250401132235-45061d10895e
CNP_VERSION=v0.3.1
MODULE=sigs.k8s.io/network-policy-api
TOOLS="${TOOLS_DIR:-$PWD/target/tools}"
OUT="$TOOLS/policy-crds"
STAMP="$OUT/.installed-$ANP_VERSION-$CNP_VERSION"

# Each file as <version> <channel> <file>.
FILES=(
  "$ANP_VERSION experimental policy.networking.k8s.io_adminnetworkpolicies.yaml"
  "$CNP_VERSION standard policy.networking.k8s.io_clusternetworkpolicies.yaml"
  "$CNP_VERSION experimental policy.networking.k8s.io_clusternetworkpolicies.yaml"
)

all_there() {
  [[ -f "$STAMP" ]] || return 1
  local entry version channel file
  for entry in "${FILES[@]}"; do
    read -r version channel file <<<"$entry"
    [[ -s "$OUT/$version/$channel/$file" ]] || return 1
  done
}
if all_there; then
  exit 0
fi

# The module's folder in the module cache, downloaded (and checksum-verified
# against sum.golang.org) through the proxy if it is not there yet.
module_dir() {
  local json
  json=$(go mod download -json "$1@$2") || { echo "install-policy-crds.sh: go mod download $1@$2 failed" >&2; exit 1; }
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

# The ANP CRD must be the API the enforcer's informer reads: the version its go.mod requires.
knp_version=$(sed -n 's/^KNP_VERSION=//p' hack/install-kube-network-policies.sh)
knp_dir=$(module_dir sigs.k8s.io/kube-network-policies "$knp_version")
pinned=$(sed -n "s|^[[:space:]]*$MODULE \(v[^ ]*\).*|\1|p" "$knp_dir/go.mod" | head -n1)
if [[ "$pinned" != "$ANP_VERSION" ]]; then
  echo "install-policy-crds.sh: kube-network-policies $knp_version requires $MODULE $pinned, not $ANP_VERSION: update ANP_VERSION" >&2
  exit 1
fi

echo "copying the $MODULE CRDs ($ANP_VERSION, $CNP_VERSION) into $OUT" >&2
rm -rf "$OUT"
for entry in "${FILES[@]}"; do
  read -r version channel file <<<"$entry"
  dir=$(module_dir "$MODULE" "$version")
  src="$dir/config/crd/$channel/$file"
  [[ -s "$src" ]] || { echo "install-policy-crds.sh: $MODULE@$version has no config/crd/$channel/$file" >&2; exit 1; }
  mkdir -p "$OUT/$version/$channel"
  # The module cache is read-only: the copies are made writable.
  install -m 0644 "$src" "$OUT/$version/$channel/$file"
done
touch "$STAMP"
