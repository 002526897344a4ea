#!/usr/bin/env bash
# One-command GPU check (bench/gpu_check.py): bench/gpu_check.sh [--dry-run] [--out FILE] [--budget S]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# the checkout's robustx (built in place there) comes first
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/gpu_check.py" "$@"
