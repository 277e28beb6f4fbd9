#!/usr/bin/env bash
# The floor under Corral's sandbox start: a bare `bwrap ... true` with the same namespaces and
# mounts the bubblewrap driver uses (minus the agent), timed N times. Compare with the
# end-to-end figures from the other bench scripts. Usage: bench/bwrap_bare.sh [N]
set -euo pipefail
n="${1:-50}"
dir="$(mktemp -d)"; trap 'rm -rf "$dir"' EXIT
drop=()
if [ "$(id -u)" = 0 ]; then
  chown 65534:65534 "$dir"; chmod 755 "$dir"
  drop=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
fi
links=()
for name in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$name" ]; then links+=(--symlink "$(readlink "/$name")" "/$name");
  elif [ -d "/$name" ]; then links+=(--ro-bind "/$name" "/$name"); fi
done
run() {
  "${drop[@]}" bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session \
    --uid 1000 --gid 1000 --hostname sandbox --ro-bind /usr /usr --ro-bind /etc /etc "${links[@]}" \
    --proc /proc --dev /dev --tmpfs /tmp --bind "$dir" /tasks/t --chdir /tasks/t --clearenv \
    --setenv PATH /usr/bin:/bin -- /bin/true
}
run  # warm up
start=$(date +%s%N)
for _ in $(seq "$n"); do run; done
end=$(date +%s%N)
awk -v n="$n" -v ns="$((end - start))" 'BEGIN { printf "bare bwrap ... true: %d runs, mean %.1f ms\n", n, ns / n / 1e6 }'
