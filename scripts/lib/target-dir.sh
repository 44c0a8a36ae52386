# Where build outputs and caches go: cargo's target directory. Sourced by every script that uses
# a path under it, before the script changes directory (a relative CARGO_TARGET_DIR is relative
# to the directory the command was started from, as cargo reads it).
#
# Sets:
#   TARGET_DIR         absolute: $CARGO_TARGET_DIR if set, else the repository's target/
#   BOARDS_TARGET_DIR  $TARGET_DIR/boards: where the board crates (runtime-embedded/boards/*,
#                      outside the workspace) build; their .cargo/config.toml says target/boards,
#                      and a set CARGO_TARGET_DIR would otherwise override it with the workspace's
#                      own folder. Build them with CARGO_TARGET_DIR="$BOARDS_TARGET_DIR".
# A set CARGO_TARGET_DIR is exported made absolute, so that cargo builds where these point from
# whatever directory it runs in.

if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
  [[ "$CARGO_TARGET_DIR" == /* ]] || CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
  export CARGO_TARGET_DIR
  TARGET_DIR="$CARGO_TARGET_DIR"
else
  TARGET_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target"
fi
BOARDS_TARGET_DIR="$TARGET_DIR/boards"
readonly TARGET_DIR BOARDS_TARGET_DIR
