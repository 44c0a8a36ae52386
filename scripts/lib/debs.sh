# Debian packages as a local tree: `apt-get download` + `dpkg-deb -x`, never `apt-get install`
# (the QEMU packages conflict with what the image has installed). Sourced by scripts that need
# QEMU or guest userland; downloads are cached in $DEBS, unpacked trees wherever the caller says.
#
# The sourcing script sets DEBS (the cache folder) and defines die() and note().

APT_UPDATED=0

# apt lists on a fresh machine are empty or stale: refresh them once, and only when the cache
# misses something.
apt_update_once() {
  ((APT_UPDATED)) && return 0
  note "apt-get update (something is not cached yet)"
  apt-get update -qq >&2 || die "apt-get update failed"
  APT_UPDATED=1
}

# cached_deb PKG: prints the cached .deb of PKG, if any (package names never contain '_').
cached_deb() {
  local f
  for f in "$DEBS/$1"_*.deb; do [[ -e "$f" ]] && { echo "$f"; return 0; }; done
  return 1
}

# download_debs PKG...: makes sure a .deb of every PKG is in the cache.
download_debs() {
  local missing=() p
  for p in "$@"; do cached_deb "$p" >/dev/null || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "needs a Debian host (apt-get) to fetch: ${missing[*]}"
  apt_update_once
  mkdir -p "$DEBS"
  note "downloading ${missing[*]}"
  # Sandbox user root: _apt cannot write into a root-owned cache folder, which only warns.
  (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "${missing[@]}" >&2) ||
    die "apt-get download failed for: ${missing[*]}"
}

# unpack_tree DIR PKG...: DIR holds the unpacked PKGs; redone only when the package list changes.
unpack_tree() {
  local dir="$1"; shift
  local want="$*"
  [[ -f "$dir/.unpacked" && "$(cat "$dir/.unpacked")" == "$want" ]] && return 0
  download_debs "$@"
  rm -rf "$dir" && mkdir -p "$dir"
  local p deb
  for p in "$@"; do
    deb="$(cached_deb "$p")"
    # An interrupted download leaves a truncated .deb: drop it so that the next run fetches it.
    dpkg-deb -x "$deb" "$dir" || { rm -f "$deb"; die "could not unpack $deb (removed; run again)"; }
  done
  echo "$want" >"$dir/.unpacked"
}

# check_runs DIR BIN: BIN (under DIR/usr/bin) starts with the libraries unpacked in DIR.
check_runs() {
  local dir="$1" bin="$1/usr/bin/$2" multiarch
  multiarch="$(uname -m)-linux-gnu"
  [[ -x "$bin" ]] || die "$2 missing from $dir"
  if ! LD_LIBRARY_PATH="$dir/usr/lib/$multiarch:$dir/lib/$multiarch" "$bin" --version \
    >/dev/null 2>&1; then
    note "the unpacked $2 does not start; libraries it cannot find:"
    LD_LIBRARY_PATH="$dir/usr/lib/$multiarch:$dir/lib/$multiarch" ldd "$bin" |
      grep 'not found' >&2 || true
    die "add the packages holding them to the package list"
  fi
}
