#!/usr/bin/env bash
# The whole test suite, as README.md gives it. Real services the tests start privately
# (MariaDB, Redis) must be installed: missing ones are installed from Debian's packages when
# this runs as root, and WEIR_REQUIRE_SERVICES=1 makes a test fail, not skip, without them.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
      echo "could not install ${missing[*]}; tests that need them will fail" >&2
  else
    echo "missing ${missing[*]} and cannot install them; tests that need them will fail" >&2
  fi
fi

export WEIR_REQUIRE_SERVICES=1
cargo test --workspace --locked "$@"
# The examples must run, not only build.
for example in examples/*.rs; do
  cargo run --quiet --locked --example "$(basename "$example" .rs)" >/dev/null
done
