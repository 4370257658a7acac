#!/usr/bin/env bash
# Builds the Debian package: the static binary, its man page and shell
# completions (generated from the clap definitions by `quarry generate`), the
# systemd unit (installed, not enabled), the alert rules, the DaemonSet and
# the docs. Needs cargo-deb (`cargo install cargo-deb --locked`).
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=target/x86_64-unknown-linux-gnu/release/quarry
mkdir -p target/deb-assets
"$bin" generate man | gzip -9n > target/deb-assets/quarry.1.gz
"$bin" generate bash > target/deb-assets/quarry.bash
"$bin" generate zsh > target/deb-assets/_quarry
"$bin" generate fish > target/deb-assets/quarry.fish
cargo deb --no-build --no-strip --quiet --target x86_64-unknown-linux-gnu --output target/debian/ 2>&1 | tail -1
ls target/debian/*.deb | tail -1
