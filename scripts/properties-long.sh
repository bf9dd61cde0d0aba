#!/usr/bin/env bash
# The long pass of the property tests (docs/reliability-properties.md): every
# property on its own, in a release build, with many cases, and a table of
# the inputs tried and the time each took.
#
#   scripts/properties-long.sh [CASES] [LOG_CASES]
#
# CASES (default 100000) is the number of inputs per property; LOG_CASES
# (default CASES/50) for the properties that write and fsync a real log per
# input, a few hundred times slower per case (an fsync each). Hand-written cases
# (regression_, hostile_, baseline_) run once, in the CI pass.
set -euo pipefail

cases=${1:-100000}
log_cases=${2:-$((cases / 50))}
cd "$(dirname "$0")/.."

bin=$(cargo test --release --lib --no-run 2>&1 |
    sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p')
if [ -z "$bin" ]; then
    echo "could not build the release test binary" >&2
    exit 1
fi

# Writing a log per case: the properties that open LogStore.
log_property='log::properties::(events_round_trip|http_to_log|a_damaged_log)'

echo "| property | inputs | seconds |"
echo "|---|---:|---:|"
"$bin" --list 2>/dev/null |
    sed -n 's/: test$//p' |
    grep '::properties::' |
    grep -Ev '::(regression|hostile|baseline)_' |
    while read -r name; do
        n=$cases
        if [[ $name =~ $log_property ]]; then
            n=$log_cases
        fi
        start=$(date +%s.%N)
        if ! PROPTEST_CASES=$n "$bin" --exact "$name" --test-threads=1 -q >/tmp/properties-long.$$ 2>&1; then
            cat /tmp/properties-long.$$ >&2
            echo "| $name | FAILED | |"
            continue
        fi
        end=$(date +%s.%N)
        printf '| %s | %d | %.1f |\n' "$name" "$n" "$(echo "$end - $start" | bc)"
    done
rm -f /tmp/properties-long.$$
