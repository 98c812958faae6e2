# What the test suite starts besides itself, installed from Debian's packages when missing (one apt-get update for
# all; with sudo when not root). Sourced by scripts/test.sh (the README's test command) and .ci/run.
# Without chromium or nginx those tests are skipped: headless Chromium (tests/integration/browser_*.rs), and
# nginx as an HTTP/2 upstream that ends its connections with GOAWAY (tests/integration/goaway.rs). redis-server
# and PostgreSQL are not optional: the Redis cache backend's tests (cache_redis.rs) and the jobs store's
# Postgres tests (jobs.rs, a throwaway cluster made by initdb) fail without them, saying what to install.
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || packages+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || packages+=(redis-server)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
if [ ${#packages[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing ${packages[*]}"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi
# Debian puts nginx in /usr/sbin, which a user's PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
