#!/usr/bin/env bash
# Refresh scripts/lock.txt: install the newest allowed releases into a new virtualenv, run the suite there,
# and only if it passes write that environment's exact versions to scripts/lock.txt. Commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
MORPHREG_DEPS=newest bash scripts/test.sh -q
{
  echo "# Exact versions the suite last passed with (scripts/refresh_lock.sh, $(date -u +%Y-%m-%d), Python $(python -c 'import platform; print(platform.python_version())'))."
  python -m pip freeze --exclude-editable | grep -v -i -E '^(pip|setuptools|wheel)==' | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
} > scripts/lock.txt.tmp
mv scripts/lock.txt.tmp scripts/lock.txt
echo "scripts/lock.txt refreshed: $(grep -c '==' scripts/lock.txt) pins"
