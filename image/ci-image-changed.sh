#!/usr/bin/env bash
# Exit 0 (and list the paths) if the image tests must run: image/, board/ (not board/pacedpcm
# or board/bench) or tests/image/ changed since the commit in .ci/image-verified, or that
# commit is unknown here. RESONATE_IMAGE_TESTS=1 forces a run, =0 forbids it.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${RESONATE_IMAGE_TESTS:-}" in 1) echo "image tests forced"; exit 0 ;; 0) exit 1 ;; esac
base=$(grep -v '^#' .ci/image-verified 2>/dev/null | grep -E '^[0-9a-f]{7,40}$' | head -1)
if [ -z "$base" ] || ! git cat-file -e "$base^{commit}" 2>/dev/null; then
    echo "image tests: verified commit '${base:-none}' not in this clone: running them"
    exit 0
fi
changed=$( { git diff --name-only "$base" HEAD -- image board tests/image \
               ':(exclude)board/pacedpcm' ':(exclude)board/bench';
             git status --porcelain -- image board tests/image ':(exclude)board/pacedpcm' \
               ':(exclude)board/bench' | cut -c4-; } | grep -v '^image/out/' | sort -u)
[ -n "$changed" ] || exit 1
echo "image tests: changed since ${base:0:12}:"; echo "$changed" | sed 's/^/  /'
exit 0
