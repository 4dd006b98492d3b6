#!/usr/bin/env bash
# The loader's mutation fuzz test with more cases (default 2000 per model; `cargo test`
# runs 60): flips, cuts and splices of real exports, loaded, inferred and analysed; a panic
# fails. Usage: scripts/fuzz_loader.sh [CASES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
SEPPRUNE_FUZZ_CASES="${1:-2000}" SEPPRUNE_FUZZ_SEED="${2:-11}" cargo test --test all mutated_exports_never_panic_the_loader -- --nocapture
