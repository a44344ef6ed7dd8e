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
mkdir -p "$OUT/protos"
# The module root is protos/ (imports read "gongji/v1/..."), as buf and other languages' compilers see it.
mapfile -t files < <(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
"$PY" -m grpc_tools.protoc -I protos \
  --python_out="$OUT/protos" --grpc_python_out="$OUT/protos" \
  --mypy_out=quiet:"$OUT/protos" --mypy_grpc_out=quiet:"$OUT/protos" \
  "${files[@]}"
# protoc names our modules after the module root (gongji.v1.x_pb2); in Python they live in the protos package.
# Prefix the imports of our own modules, and the module name the message classes report, with "protos.".
find "$OUT/protos" \( -name '*_pb2*.py' -o -name '*_pb2*.pyi' \) -exec sed -i -E \
  -e 's/^(from|import) gongji\./\1 protos.gongji./' \
  -e "s/'(gongji\.[A-Za-z0-9_.]+_pb2)'/'protos.\1'/" {} +
