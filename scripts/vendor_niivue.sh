#!/usr/bin/env bash
# Vendor the NiiVue browser bundle used by the annotation viewer (src/activeseg/web/vendor/niivue/).
# Reproducible: a pinned version from the npm registry, checked against a pinned sha256 of the package tarball.
# The vendored files are committed, so neither CI nor a user needs npm; rerun this only to change the version.
# NiiVue is BSD-2-Clause (package.json "license"); its npm tarball carries no LICENSE file, so the licence text of
# the NiiVue repository is written beside the bundle, with the version and the tarball's hash.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.69.0
SHA256=6e9a6a471b428eb3b258a0086beca9187d95e43a781a39e8a519c6da246af485
DEST=src/activeseg/web/vendor/niivue
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@niivue/niivue@$VERSION" >/dev/null)
tarball="$work/niivue-niivue-$VERSION.tgz"
echo "$SHA256  $tarball" | sha256sum --check --quiet
tar -xzf "$tarball" -C "$work" package/package.json package/dist/niivue.umd.js
license="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["license"])' "$work/package/package.json")"
[ "$license" = "BSD-2-Clause" ] || { echo "unexpected NiiVue licence: $license" >&2; exit 1; }
mkdir -p "$DEST"
cp "$work/package/dist/niivue.umd.js" "$DEST/niivue.umd.js"
cat > "$DEST/LICENSE" <<'LICENSE'
BSD 2-Clause License

Copyright (c) 2021, Niivue
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
LICENSE
cat > "$DEST/VERSION" <<INFO
@niivue/niivue $VERSION (npm), dist/niivue.umd.js
package tarball sha256 $SHA256
bundle sha256 $(sha256sum "$DEST/niivue.umd.js" | cut -d' ' -f1)
vendored by scripts/vendor_niivue.sh
INFO
echo "vendored NiiVue $VERSION into $DEST"
