#!/usr/bin/env bash
# ET1 (DebitCredit, pgbench's TPC-B proportions) on crl against PostgreSQL's pgbench, durable,
# on this machine, in one run (DESIGN.md §7 "Targets"; results go to BENCHMARKS.md "ET1").
#
# usage: scripts/et1-vs-pgbench.sh [-s SCALE] [-T SECONDS] [-n NODES] [--csv FILE] [-c CLIENTS...]
#   defaults: -s 10 -T 20 -n 3 -c 1 4 16; --csv also writes `system,clients,tps` rows (for
#   tools/crl-plots: scripts/plots.sh)
#
# 1. builds the et1 example in release;
# 2. runs the peers script ../shared/peers/pgbench.sh -s SCALE -T SECONDS -c CLIENTS...
#    (beside the repository; override with PGBENCH_SH=path). It installs PostgreSQL if needed
#    and starts its own throw-away server with fsync=on, synchronous_commit=on;
# 3. runs et1 --scale SCALE --nodes NODES --clients CLIENTS... --durable on, once with
#    --access uniform (pgbench's pattern) and once with --access local (DebitCredit's);
# 4. prints a table of TPS and the ratio to PostgreSQL per client count.
# Every et1 run verifies its invariants; a violation makes this script fail.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
pgbench_sh=${PGBENCH_SH:-$here/../../shared/peers/pgbench.sh}
scale=10; secs=20; nodes=3; clients=(1 4 16); csv=
while [ $# -gt 0 ]; do
  case "$1" in
    -s) scale=$2; shift 2;;
    -T) secs=$2; shift 2;;
    -n) nodes=$2; shift 2;;
    --csv) csv=$2; shift 2;;
    -c) shift; clients=(); while [ $# -gt 0 ] && [[ "$1" != -* ]]; do clients+=("$1"); shift; done;;
    *) echo "usage: $0 [-s SCALE] [-T SECONDS] [-n NODES] [--csv FILE] [-c CLIENTS...]" >&2; exit 2;;
  esac
done
if [ ! -f "$pgbench_sh" ]; then
  echo "$0: the peers script $pgbench_sh is missing (set PGBENCH_SH)" >&2
  exit 2
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
echo "== building et1 (release)"
(cd "$root" && cargo build --release --locked --example et1)
et1="$CARGO_TARGET_DIR/release/examples/et1"

out=$(mktemp -d -t et1-vs-pgbench.XXXXXX)
trap 'rm -rf "$out"' EXIT

echo "== machine: $(nproc) vCPU, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
echo "== PostgreSQL: $pgbench_sh -s $scale -T $secs -c ${clients[*]}"
bash "$pgbench_sh" -s "$scale" -T "$secs" -c "${clients[@]}" | tee "$out/pg.txt"

for access in uniform local; do
  echo "== crl: et1 --scale $scale --nodes $nodes --seconds $secs --access $access --durable on --clients ${clients[*]}"
  "$et1" --scale "$scale" --nodes "$nodes" --seconds "$secs" --access "$access" --durable on \
    --clients "${clients[@]}" | tee "$out/et1-$access.txt"
done

# The value of key $2 in the line of $1 that has clients=$3.
field() { grep -E "(^| )clients=$3( |$)" "$1" | sed -n "s/.* $2=\([^ ]*\).*/\1/p" | head -1; }
num() { awk -v a="$1" 'BEGIN { if (a == "") print "-"; else printf "%.1f", a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }

echo
echo "ET1 scale $scale, $nodes crl nodes in one process, durable (data_dir set) vs PostgreSQL pgbench (fsync=on, synchronous_commit=on)"
printf '%-8s | %12s | %15s %7s %7s %7s | %15s %7s %7s %7s | %13s\n' \
  clients "pgbench TPS" "crl uniform TPS" ratio p50_ms p99_ms "crl local TPS" ratio p50_ms p99_ms "fsync p50 u/l"
for c in "${clients[@]}"; do
  pg=$(field "$out/pg.txt" tps "$c")
  u=$(field "$out/et1-uniform.txt" tps "$c"); l=$(field "$out/et1-local.txt" tps "$c")
  printf '%-8s | %12s | %15s %7s %7s %7s | %15s %7s %7s %7s | %13s\n' "$c" "$(num "$pg")" \
    "$(num "$u")" "$(ratio "$u" "$pg")" "$(field "$out/et1-uniform.txt" p50_ms "$c")" \
    "$(field "$out/et1-uniform.txt" p99_ms "$c")" \
    "$(num "$l")" "$(ratio "$l" "$pg")" "$(field "$out/et1-local.txt" p50_ms "$c")" \
    "$(field "$out/et1-local.txt" p99_ms "$c")" \
    "$(field "$out/et1-uniform.txt" fsync_p50_ms "$c")/$(field "$out/et1-local.txt" fsync_p50_ms "$c")"
done
if [ -n "$csv" ]; then
  {
    echo "system,clients,tps"
    for c in "${clients[@]}"; do
      echo "PostgreSQL pgbench,$c,$(field "$out/pg.txt" tps "$c")"
      echo "crl ET1 uniform,$c,$(field "$out/et1-uniform.txt" tps "$c")"
      echo "crl ET1 local,$c,$(field "$out/et1-local.txt" tps "$c")"
    done
  } > "$csv"
  echo "== TPS written to $csv"
fi
