#!/usr/bin/env bash
# Regenerates the SVG plots of BENCHMARKS.md (docs/plots/) from fresh benchmark runs on this
# machine; the CSV files they are drawn from go to bench-results/ (kept beside the plots).
#
#   bash scripts/plots.sh          # miss latency (CDF) and memory per region: a few minutes
#   bash scripts/plots.sh --et1    # also ET1 beside PostgreSQL pgbench (scripts/et1-vs-pgbench.sh,
#                                  # which installs and starts its own PostgreSQL): minutes more
#
# Without --et1 an existing bench-results/et1_tps.csv is drawn again as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench-results docs/plots
cargo build --release --locked --example miss_latency --example many_regions
echo "== miss latency (examples/miss_latency.rs)"
target/release/examples/miss_latency --csv bench-results/miss_latency.csv
echo "== memory per region (examples/many_regions.rs) at 10^4, 10^5 and 10^6 regions"
rm -f bench-results/many_regions.csv
for n in 10000 100000 1000000; do
  target/release/examples/many_regions --regions "$n" --csv bench-results/many_regions.csv
done
if [ "${1:-}" = --et1 ]; then
  echo "== ET1 beside PostgreSQL (scripts/et1-vs-pgbench.sh)"
  bash scripts/et1-vs-pgbench.sh -T 10 --csv bench-results/et1_tps.csv -c 1 4 16
fi
echo "== plots (tools/crl-plots)"
cargo run --release --locked -p crl-plots -- --dir bench-results --out docs/plots
