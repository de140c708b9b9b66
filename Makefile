# worker-mesh: `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run run-node1 run-node2 run-node3 test test-fast lint bench proto clean

setup: $(STAMP) proto/mesh_pb2.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generated from proto/mesh.proto by grpcio-tools: no system protoc needed.
proto/mesh_pb2.py: proto/mesh.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto proto/mesh.proto

proto: proto/mesh_pb2.py

run: setup
	$(PY) run_node.py --api-port 3000

run-node1: setup
	$(PY) run_node.py --api-port 3001 --discovery-port 8080

run-node2: setup
	$(PY) run_node.py --api-port 3002 --discovery-port 8080

run-node3: setup
	$(PY) run_node.py --api-port 3003 --discovery-port 8080

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not process and not lan"

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) proto/mesh_pb2.py proto/mesh_pb2.pyi *.egg-info
