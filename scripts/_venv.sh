# Sourced by scripts/demo and scripts/test: create or reuse .venv and install activeseg into it.
# TORCH_SPEC picks the torch build: the default pins the CPU build that these machines carry locally;
# on a CUDA machine use TORCH_SPEC=torch (see README, "GPU").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
stamp=".venv/.activeseg-installed${EXTRAS:+-$EXTRAS}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC" -e ".${EXTRAS:+[$EXTRAS]}"
  echo "$want" > "$stamp"
  echo "$want" > .venv/.activeseg-installed  # the extras install includes the plain one
fi
