#!/usr/bin/env bash
# There is no container engine on our machines, so CI checks the Containerfile's shape
# instead of building it: two stages, a non-root user 107, `ferry import` as the
# entrypoint, port 8443, no VDDK copied in, and the binary it copies is the one the
# build stage builds.
set -euo pipefail
cd "$(dirname "$0")/.."
f=Containerfile
fail() { echo "Containerfile: $*" >&2; exit 1; }
[ -f "$f" ] || fail "missing"
body=$(grep -v '^\s*#' "$f")
froms=$(grep -c '^FROM ' <<<"$body")
[ "$froms" -eq 2 ] || fail "expected 2 stages (build, runtime), found $froms"
grep -q '^FROM .* AS build$' <<<"$body" || fail "first stage must be named build"
grep -q 'cargo build --release --locked -p ferry -p ferry-controller' <<<"$body" || fail "build stage must build -p ferry -p ferry-controller --release --locked"
grep -q 'install -D -m 0755 target/release/ferry /out/ferry' <<<"$body" || fail "build stage must install target/release/ferry as /out/ferry"
grep -q '^COPY --from=build /out/ferry /usr/local/bin/ferry$' <<<"$body" || fail "runtime stage must copy the built binary from the build stage"
grep -q 'install -D -m 0755 target/release/ferry-controller /out/ferry-controller' <<<"$body" || fail "build stage must install target/release/ferry-controller"
grep -q '^COPY --from=build /out/ferry-controller /usr/local/bin/ferry-controller$' <<<"$body" || fail "runtime stage must copy ferry-controller (deploy/controller/deployment.yaml runs it)"
grep -q '/usr/local/bin/ferry-controller' deploy/controller/deployment.yaml || fail "the Deployment no longer runs /usr/local/bin/ferry-controller"
last_user=$(grep '^USER ' <<<"$body" | tail -1)
[ "$last_user" = "USER 107:107" ] || fail "runtime user must be 107:107, got '${last_user:-none}'"
grep -q '^EXPOSE 8443$' <<<"$body" || fail "must expose 8443 (metrics)"
grep -q '^ENTRYPOINT \["/usr/local/bin/ferry", "import"\]$' <<<"$body" || fail "entrypoint must be ferry import"
if grep -qiE '^(COPY|ADD) .*(vmware|vix|vddk)' <<<"$body"; then fail "VDDK must not be copied into the image"; fi
# The binary name the build stage installs must be the package's binary.
grep -q '^name = "ferry"' importer/Cargo.toml || fail "importer/Cargo.toml no longer builds a binary named ferry"
grep -q '^name = "ferry-controller"' controller/Cargo.toml || fail "controller/Cargo.toml no longer builds a binary named ferry-controller"
# The VDDK init image: the layout `kubectl mtv create vddk-image` builds.
v=Containerfile.vddk
[ -f "$v" ] || fail "$v missing"
vbody=$(grep -v '^\s*#' "$v")
grep -q '^COPY vmware-vix-disklib-distrib /vmware-vix-disklib-distrib$' <<<"$vbody" || fail "$v must copy the distribution to /vmware-vix-disklib-distrib"
grep -q '^ENTRYPOINT \["cp", "-r", "/vmware-vix-disklib-distrib", "/opt"\]$' <<<"$vbody" || fail "$v's entrypoint must copy the distribution into /opt"
grep -q '^USER ' <<<"$vbody" || fail "$v must not run as root"
echo "Containerfile: ok (2 stages, user 107, ferry import, ferry-controller, :8443, no VDDK)"
