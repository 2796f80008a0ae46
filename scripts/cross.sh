#!/usr/bin/env bash
# crl on other platforms, from one x86_64 Linux machine (what CI runs after the main steps):
#
#   bash scripts/cross.sh cluster      # a 3-process cluster: x86_64, s390x (big endian, qemu), i686 (32-bit)
#   bash scripts/cross.sh core-tests   # crl-core's tests (unit, wire, log format) and the durable
#                                      # store's tests on s390x under qemu
#   bash scripts/cross.sh windows      # cargo check of the whole workspace for x86_64-pc-windows-gnu
#   bash scripts/cross.sh all          # the three, each timed
#
# Each step first installs what it lacks (rustup targets; as root on Debian: qemu-user and the
# gcc cross compilers, which ring's build needs), so a rerun installs nothing. The cluster
# program is tools/crl-hetero; every node checks every other node's values and exits non-zero
# on any mismatch. Cross-compiler and runner settings are environment variables set here, not
# global cargo configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never} CARGO_INCREMENTAL=0

S390X=s390x-unknown-linux-gnu
I686=i686-unknown-linux-gnu
WINDOWS=x86_64-pc-windows-gnu

# Cross compilers (linker and C code such as ring's) and how to run each target's binaries.
export CARGO_TARGET_S390X_UNKNOWN_LINUX_GNU_LINKER=s390x-linux-gnu-gcc
export CC_s390x_unknown_linux_gnu=s390x-linux-gnu-gcc AR_s390x_unknown_linux_gnu=s390x-linux-gnu-ar
export CARGO_TARGET_S390X_UNKNOWN_LINUX_GNU_RUNNER="qemu-s390x -L /usr/s390x-linux-gnu"
export CARGO_TARGET_I686_UNKNOWN_LINUX_GNU_LINKER=i686-linux-gnu-gcc
export CC_i686_unknown_linux_gnu=i686-linux-gnu-gcc AR_i686_unknown_linux_gnu=i686-linux-gnu-ar
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar

apt_install() { # packages, installed only when missing (needs root and Debian)
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing packages: ${missing[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
}

rust_target() { # rustup targets, added only when missing
  local installed
  installed=$(rustup target list --installed)
  for t in "$@"; do grep -qx "$t" <<<"$installed" || rustup target add "$t"; done
}

setup_linux() {
  command -v qemu-s390x >/dev/null && command -v s390x-linux-gnu-gcc >/dev/null \
    && command -v i686-linux-gnu-gcc >/dev/null && [ -e /usr/i686-linux-gnu/lib/ld-linux.so.2 ] \
    && [ -e /usr/s390x-linux-gnu/lib/ld64.so.1 ] \
    || apt_install qemu-user gcc-s390x-linux-gnu libc6-dev-s390x-cross gcc-i686-linux-gnu libc6-dev-i386-cross
  rust_target "$S390X" "$I686"
}

# How to run an i686 binary: natively (an x86_64 kernel runs 32-bit code) with Debian's i386
# cross libc, or under qemu-i386 where the kernel has no 32-bit support.
i686_runner() {
  local bin=$1
  if /usr/i686-linux-gnu/lib/ld-linux.so.2 --library-path /usr/i686-linux-gnu/lib "$bin" --help >/dev/null 2>&1; then
    echo "/usr/i686-linux-gnu/lib/ld-linux.so.2 --library-path /usr/i686-linux-gnu/lib"
  else
    echo "qemu-i386 -L /usr/i686-linux-gnu"
  fi
}

cmd_cluster() {
  setup_linux
  # Debug builds: they share the host's artifacts with `cargo test` and the s390x ones with
  # the crl-core tests, and build several times faster than release; the run stays short.
  echo "-- build crl-hetero for x86_64, $S390X and $I686, and crl-node for certificates"
  cargo build --locked -p crl-hetero -p crl-net --bin crl-hetero --bin crl-node
  cargo build --locked -p crl-hetero --target "$S390X"
  cargo build --locked -p crl-hetero --target "$I686"
  local x86=target/debug/crl-hetero s390x=target/$S390X/debug/crl-hetero i686=target/$I686/debug/crl-hetero
  file -L "$s390x" "$i686" 2>/dev/null | sed 's/, BuildID.*//' || true

  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/crl-hetero.XXXXXX")
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
  target/debug/crl-node cert init --dir "$dir/certs" >/dev/null
  target/debug/crl-node cert issue --dir "$dir/certs" --id 0,1,2 >/dev/null
  local base=$((20000 + RANDOM % 20000))
  {
    echo 'cluster_id = 11'
    echo 'ca = "certs/ca.pem"'
    echo 'op_timeout_ms = 20000'
    for i in 0 1 2; do
      printf '[[node]]\nid = %d\naddr = "127.0.0.1:%d"\ndata_dir = "data/n%d"\n' "$i" $((base + i)) "$i"
    done
  } >"$dir/cluster.toml"

  local runner32
  runner32=$(i686_runner "$i686")
  echo "-- cluster: n0 x86_64 (native), n1 s390x (qemu-s390x), n2 i686 (${runner32%% *})"
  local start=$SECONDS
  # Each node gives up after 150 s; `timeout` is the backstop should a process hang.
  timeout 240 "$x86" --config "$dir/cluster.toml" --id 0 &
  local p0=$!
  timeout 240 qemu-s390x -L /usr/s390x-linux-gnu "$s390x" --config "$dir/cluster.toml" --id 1 &
  local p1=$!
  # shellcheck disable=SC2086 # the runner is a command with arguments
  timeout 240 $runner32 "$i686" --config "$dir/cluster.toml" --id 2 &
  local p2=$!
  local failed=0
  for p in $p0 $p1 $p2; do wait "$p" || failed=1; done
  trap - EXIT
  rm -rf "$dir"
  if [ $failed -ne 0 ]; then
    echo "heterogeneous cluster: FAILED" >&2
    exit 1
  fi
  echo "-- the cluster ran for $((SECONDS - start)) s; every node checked every value"
  echo "hetero: 3 passed, 0 failed"
}

cmd_core_tests() {
  setup_linux
  echo "-- crl-core's tests (golden vectors, hostile frames, the log format) on $S390X under qemu"
  # Two of the store's tests are skipped under qemu-user (they pass natively in the main run):
  # a_real_full_disk_in_a_small_tmpfs re-executes its own binary through `unshare -m sh`,
  # which the kernel cannot run without binfmt_misc for s390x ("Exec format error"); while
  # that failing child lives it also holds copies of the other tests' directory-lock fds, so
  # concurrent tests saw their store "locked".
  # reopening_while_processes_are_spawned_never_finds_the_lock_held is skipped for the same
  # reason: it spawns a process in a loop while reopening a store, and under qemu-user a
  # child holds its copy of the directory lock from fork to exec for far longer than
  # natively (one CI run saw the store stay `Locked` past the 2 s wait); it passes natively.
  cargo test --locked -p crl-core --target "$S390X" --lib --tests
  echo "-- the durable store's tests (crl-net's tests/durable.rs: files, recovery, repair) on $S390X"
  cargo test --locked -p crl-net --target "$S390X" --test durable -- \
    --skip a_real_full_disk_in_a_small_tmpfs \
    --skip reopening_while_processes_are_spawned_never_finds_the_lock_held
}

cmd_windows() {
  command -v x86_64-w64-mingw32-gcc >/dev/null || apt_install gcc-mingw-w64-x86-64
  rust_target "$WINDOWS"
  echo "-- cargo check --workspace --all-targets --target $WINDOWS"
  cargo check --locked --workspace --all-targets --target "$WINDOWS"
}

timed() {
  local t0=$SECONDS
  "$@"
  echo "== $* took $((SECONDS - t0)) s"
}

case "${1:-cluster}" in
  cluster) timed cmd_cluster ;;
  core-tests) timed cmd_core_tests ;;
  windows) timed cmd_windows ;;
  all) timed cmd_windows; timed cmd_core_tests; timed cmd_cluster ;;
  *) echo "usage: $0 [cluster|core-tests|windows|all]" >&2; exit 2 ;;
esac
