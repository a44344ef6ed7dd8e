#!/usr/bin/env bash
# Generates Python code and mypy stubs for protos/**/*.proto: the only writer of generated code.
# Usage: gen_protos.sh [OUT_DIR]   (default: the repository root, i.e. next to the .proto files)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"  # protoc finds the mypy plugins beside the interpreter
OUT=${1:-.}
if [ "$OUT" = "." ]; then
  find protos \( -name '*_pb2*.py' -o -name '*_pb2*.pyi' \) -delete
fi
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -I . \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --mypy_out=quiet:"$OUT" --mypy_grpc_out=quiet:"$OUT" \
  $(find protos -name '*.proto' | sort)
