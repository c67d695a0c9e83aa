# Sourced by test.sh and the run_*.sh launchers: finds or installs what the project needs.
#   mn_ensure_deno        puts a Deno on PATH (the pinned one from npm into .deno/ when none is found)
#   mn_ensure_debs P...   installs Debian packages that are missing (apt-get as root, else says what to run)
MN_DENO_VERSION=2.9.6
MN_ROOT=${MN_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

mn_ensure_deno() {
  if command -v deno >/dev/null 2>&1; then return 0; fi
  local d
  for d in "$MN_ROOT/.deno/node_modules/deno" "$MN_ROOT/.deno/node_modules/@deno/linux-x64-glibc" \
    "$MN_ROOT/.deno/node_modules/@deno/linux-arm64-glibc"; do
    if [[ -x $d/deno ]]; then export PATH="$d:$PATH"; return 0; fi
  done
  if ! command -v npm >/dev/null 2>&1; then
    echo "error: deno is not installed and npm is missing to install it (install Node.js + npm, or Deno $MN_DENO_VERSION)" >&2
    return 1
  fi
  echo "installing Deno $MN_DENO_VERSION from npm into .deno/ ..." >&2
  mkdir -p "$MN_ROOT/.deno"
  (cd "$MN_ROOT/.deno" && npm install --no-save --no-audit --no-fund --loglevel=error --prefix . "deno@$MN_DENO_VERSION" >&2) || {
    echo "error: npm install deno@$MN_DENO_VERSION failed" >&2
    return 1
  }
  for d in "$MN_ROOT/.deno/node_modules/deno" "$MN_ROOT/.deno/node_modules/@deno/linux-x64-glibc" \
    "$MN_ROOT/.deno/node_modules/@deno/linux-arm64-glibc"; do
    if [[ -x $d/deno ]]; then export PATH="$d:$PATH"; deno --version | head -n1 >&2; return 0; fi
  done
  echo "error: npm installed deno@$MN_DENO_VERSION but no deno binary was found under .deno/node_modules" >&2
  return 1
}

# Usage: mn_ensure_debs FILE_OR_CMD:PACKAGE ... — a probe (an absolute file path, or a command name) and
# the Debian package that provides it.
mn_ensure_debs() {
  local missing=() spec probe pkg
  for spec in "$@"; do
    probe=${spec%%:*}
    pkg=${spec##*:}
    if [[ $probe == /* ]]; then [[ -e $probe ]] && continue; else command -v "$probe" >/dev/null 2>&1 && continue; fi
    missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 || {
      echo "error: apt-get install ${missing[*]} failed" >&2
      return 1
    }
  else
    echo "error: missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
}
