# worker-mesh: `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system-deps run run-node1 run-node2 run-node3 test test-fast lint bench proto clean

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

# Debian packages the multi-host tests use (ip for namespaces, nft for packet loss); installed
# only when missing and only as root (CI is root; elsewhere those tests skip with a reason).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    missing=""; \
	    command -v ip >/dev/null || missing="$$missing iproute2"; \
	    command -v nft >/dev/null || missing="$$missing nftables"; \
	    if [ -n "$$missing" ]; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    fi; \
	fi

test: setup system-deps
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
